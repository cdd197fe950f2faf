package main

import (
	"embed"
	"fmt"
	"io"
	"net/url"
	"os"
	"reflect"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"
)

// The commented examples: the one source of deploy/edge.yaml and deploy/core.yaml
// (a test keeps those equal to these).
//
//go:embed examples/edge.yaml examples/core.yaml
var examples embed.FS

func example(roleName string) []byte {
	b, err := examples.ReadFile("examples/" + roleName + ".yaml")
	if err != nil {
		panic(err) // embedded: cannot fail
	}
	return b
}

func roleByName(name string) (role, bool) {
	switch name {
	case "edge":
		return edgeRole(), true
	case "core":
		return coreRole(), true
	}
	return role{}, false
}

func configCommand() *cli.Command {
	return &cli.Command{
		Name:   "config",
		Usage:  "check a configuration file, or print a commented example",
		Action: noSuchCommand,
		Subcommands: []*cli.Command{
			{
				Name:      "check",
				Usage:     "print the effective configuration of an edge or core and where each value comes from; exit non-zero on any error",
				ArgsUsage: "[-- edge or core flags]",
				Description: `Merges what 'broker edge' or 'broker core' would: the defaults, --config FILE,
the environment (BROKER_*) and the flags after '--', then loads the certificates
and checks every value, without binding anything.

   broker config check --config /etc/salt-broker/edge.yaml
   broker config check --config core.yaml --role core -- --listen :8443`,
				Flags: []cli.Flag{
					&cli.PathFlag{Name: "config", Usage: "the file to check (required) [$BROKER_CONFIG]"},
					&cli.StringFlag{Name: "role", Usage: "edge or core (default: told from the file's keys)"},
				},
				Action: configCheck,
			},
			{
				Name:      "example",
				Usage:     "print a full commented configuration of an edge or a core (deploy/edge.yaml, deploy/core.yaml)",
				ArgsUsage: "edge|core",
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return usagef("say which: 'broker config example edge' or 'broker config example core'")
					}
					if _, ok := roleByName(c.Args().First()); !ok {
						return usagef("unknown role %q: want edge or core", c.Args().First())
					}
					_, err := c.App.Writer.Write(example(c.Args().First()))
					return err
				},
			},
		},
	}
}

func configCheck(c *cli.Context) error {
	path := c.Path("config")
	if path == "" {
		path = os.Getenv("BROKER_CONFIG")
	}
	if path == "" {
		return usagef("--config is required: the file to check")
	}
	name := c.String("role")
	if name == "" {
		var err error
		if name, err = guessRole(path); err != nil {
			return err
		}
	}
	r, ok := roleByName(name)
	if !ok {
		return usagef("--role %q: want edge or core", name)
	}
	// The role's own flags, parsed as `broker edge` parses them, so the check
	// merges exactly what the service would.
	inner := &cli.App{
		Name:           "broker config check",
		HideHelp:       true,
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   onUsageError,
		Writer:         c.App.Writer,
		ErrWriter:      c.App.ErrWriter,
		Commands: []*cli.Command{{
			Name:  r.name,
			Flags: append([]cli.Flag{configFlag()}, r.flags()...),
			Action: func(rc *cli.Context) error {
				l, err := load(rc, r)
				if err != nil {
					return err
				}
				return printCheck(rc.App.Writer, l)
			},
		}},
	}
	quietUsageErrors(inner.Commands)
	args := []string{"broker", r.name, "--config", path}
	for _, k := range []string{"log-level", "log-format"} {
		if c.IsSet(k) { // `broker --log-level debug config check ...`: the app's flag
			args = append(args, "--"+k, c.String(k))
		}
	}
	return inner.RunContext(c.Context, append(args, c.Args().Slice()...))
}

// guessRole tells an edge's file from a core's by the keys only one of them has.
func guessRole(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--config: %w", err)
	}
	var keys map[string]any
	if err := yaml.Unmarshal(b, &keys); err != nil {
		return "", usagef("--config %s: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	only := func(a, b role) map[string]bool {
		m := map[string]bool{}
		for _, f := range a.fields() {
			m[f.key] = true
		}
		for _, f := range b.fields() {
			delete(m, f.key)
		}
		return m
	}
	edgeOnly, coreOnly := only(edgeRole(), coreRole()), only(coreRole(), edgeRole())
	var e, k bool
	for key := range keys {
		e = e || edgeOnly[key]
		k = k || coreOnly[key]
	}
	switch {
	case e && !k:
		return "edge", nil
	case k && !e:
		return "core", nil
	}
	return "", usagef("--config %s: cannot tell from its keys whether it configures an edge or a core: add --role edge or --role core", path)
}

// printCheck prints every setting, its value and its source, then what starting
// would log, then loads the certificates and validates as the service would.
func printCheck(w io.Writer, l *loaded) error {
	fmt.Fprintf(w, "%s configuration from %s\n\n", l.role.name, l.path)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tVALUE\tSOURCE")
	for _, f := range l.role.fields() {
		src := l.sourceOf(f.key)
		if h := l.how[f.key]; h != "" {
			src += "; " + h
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", f.key, showValue(f, l.settings.Field(f.index)), src)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range l.notes {
		fmt.Fprintf(w, "note: %s%s\n", n.msg, showArgs(n.args))
	}
	for _, n := range l.warns {
		fmt.Fprintf(w, "warning: %s%s\n", n.msg, showArgs(n.args))
	}
	if _, err := newLogger(l.get("log-level").String(), l.get("log-format").String()); err != nil {
		return usagef("%w%s", err, l.from("log-level"))
	}
	var err error
	switch l.role.name { // validates every value, then loads the certificates
	case "edge":
		_, err = edgeConfig(l)
	case "core":
		_, err = coreConfig(l)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "\nOK: certificates load and every value is allowed")
	return nil
}

func showArgs(args []any) string {
	var b strings.Builder
	for i := 0; i+1 < len(args); i += 2 {
		fmt.Fprintf(&b, " %v=%v", args[i], shown(fmt.Sprint(args[i+1])))
	}
	return b.String()
}

// showValue prints a value as it would be written in the file; a proxy's
// password is not printed.
func showValue(f field, v reflect.Value) string {
	switch {
	case f.typ == durationType:
		return time.Duration(v.Int()).String()
	case v.Kind() == reflect.Slice:
		if v.Len() == 0 {
			return `""`
		}
		return strings.Join(v.Interface().(nameList), ",")
	case v.Kind() == reflect.String:
		s := v.String()
		if u, err := url.Parse(s); err == nil && u.User != nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
				s = u.String()
			}
		}
		return shown(s)
	}
	return fmt.Sprint(v.Interface())
}
