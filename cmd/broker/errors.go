package main

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/salt-broker/salt-broker/internal/setting"
)

// Exit codes: 0 done; 2 a usage error — a flag, environment variable or --config key
// that is unknown, missing, unparsable or out of range, refused before anything
// started; 1 anything else (a certificate that does not load, a port taken, an admin
// endpoint that does not answer). Either way stderr gets one line.
const (
	exitFailure = 1
	exitUsage   = 2
)

// usageError is a command line the operator has to correct.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func exitCode(err error) int {
	var ue usageError
	var ec cli.ExitCoder
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue), setting.IsError(err):
		return exitUsage
	case errors.As(err, &ec) && ec.ExitCode() != 0:
		return ec.ExitCode()
	}
	return exitFailure
}

// oneLine keeps the report to one line whatever the error holds.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", " ")), " ")
}

// quietUsageErrors makes every command report a flag it cannot parse as one usage
// error, instead of urfave/cli's default: "Incorrect Usage" and the whole help (40
// lines on stdout, the error itself only at the end on stderr).
func quietUsageErrors(cmds []*cli.Command) {
	for _, c := range cmds {
		c.OnUsageError = onUsageError
		quietUsageErrors(c.Subcommands)
	}
}

func onUsageError(c *cli.Context, err error, _ bool) error {
	return usageError{errors.New(explainFlagError(flagsOf(c), err))}
}

func flagsOf(c *cli.Context) []cli.Flag {
	if c.Command != nil { // the root command too: it holds the app's flags
		return c.Command.Flags
	}
	return c.App.Flags
}

var (
	// The standard flag package's and urfave/cli's wording, which urfave/cli passes on.
	reInvalidValue = regexp.MustCompile(`^invalid value "(.*)" for flag -(\S+): (.*)$`)
	reEnvValue     = regexp.MustCompile(`^could not parse "(.*)" as \S+ value from (?:environment variable|file) "([^"]*)" for flag (\S+): `)
	reUndefined    = regexp.MustCompile(`^flag provided but not defined: -(\S+)$`)
	reNeedsArg     = regexp.MustCompile(`^flag needs an argument: -(\S+)$`)
)

// explainFlagError rewrites a flag parse error into "--flag value: what is allowed".
func explainFlagError(flags []cli.Flag, err error) string {
	msg := err.Error()
	if m := reInvalidValue.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("%s %s: %s", dashed(m[2]), shown(m[1]), wantFor(flags, m[2], m[3]))
	}
	if m := reEnvValue.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("%s %s (from %s): %s", dashed(m[3]), shown(m[1]), m[2], wantFor(flags, m[3], ""))
	}
	if m := reUndefined.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("unknown flag %s (see --help)", dashed(m[1]))
	}
	if m := reNeedsArg.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("%s needs a value", dashed(m[1]))
	}
	return msg
}

// wantFor says what a flag takes, from its type.
func wantFor(flags []cli.Flag, name, reason string) string {
	if strings.Contains(reason, "out of range") {
		return "out of range"
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n != name {
				continue
			}
			switch f.(type) {
			case *cli.IntFlag, *cli.Int64Flag, *cli.UintFlag, *cli.Uint64Flag:
				return "must be a whole number"
			case *cli.DurationFlag:
				return "must be a duration such as 500ms, 30s, 5m or 1h"
			case *cli.BoolFlag:
				return "must be true or false"
			}
		}
	}
	if reason != "" {
		return reason
	}
	return "cannot be parsed"
}

func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// shown prints a value as given, quoted only where it would not read as one word.
func shown(v string) string {
	if v == "" || strings.ContainsAny(v, " \t\"") {
		return strconv.Quote(v)
	}
	return v
}

// requireFlags checks required flags after --config is applied. urfave/cli's own
// Required is checked before any Before runs, so a flag given only in the config
// file (the old salt-broker's master:) did not count, and a missing one printed the
// whole help.
func requireFlags(names ...string) cli.BeforeFunc {
	return func(c *cli.Context) error {
		var missing []string
		for _, n := range names {
			if !c.IsSet(n) {
				missing = append(missing, "--"+n)
			}
		}
		switch len(missing) {
		case 0:
			return nil
		case 1:
			return usagef("%s is required (see --help)", missing[0])
		}
		return usagef("%s are required (see --help)", strings.Join(missing, ", "))
	}
}

// noSuchCommand is the Action of the app and of commands that only hold
// subcommands: an unknown one is a usage error (urfave/cli would look for a help
// topic of that name and exit 3), no command at all shows the help.
func noSuchCommand(c *cli.Context) error {
	if c.Args().Present() {
		return usagef("unknown command %q (see --help)", c.Args().First())
	}
	if c.Command == nil || c.Command.Name == c.App.Name {
		return cli.ShowAppHelp(c)
	}
	return cli.ShowSubcommandHelp(c)
}
