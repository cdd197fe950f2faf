// Command broker is salt-broker's one binary: `broker edge` near the minions,
// `broker core` beside the Salt master, `broker certs` for their certificates,
// `broker status` to look at a running one, and `broker demo` to see it work.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/salt-broker/salt-broker/internal/logfmt"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newApp().RunContext(ctx, os.Args); err != nil {
		if multiLine(err) { // several problems of one config: one line each
			fmt.Fprintln(os.Stderr, "broker:", err)
		} else {
			fmt.Fprintln(os.Stderr, "broker:", oneLine(err))
		}
		stop()
		os.Exit(exitCode(err)) // 2: usage error, 1: any other failure (errors.go)
	}
}

func newApp() *cli.App {
	app := &cli.App{
		Name:  "broker",
		Usage: "carry SaltStack's ZeroMQ traffic across long, lossy links over one QUIC connection",
		Description: `salt-broker is a tunnel pair. 'broker edge' runs near the minions and serves their
ZeroMQ ports (4505 publish, 4506 ret); 'broker core' runs beside the Salt master and
connects to it. Between them runs one QUIC connection with mutual TLS (UDP 443), or
TLS + smux over TCP on the same port where UDP is blocked. Publications are replayed
and requests re-sent across link loss, so nothing is lost or duplicated.

Start with 'broker demo', then see README.md for a real deployment.`,
		// Also settings of edge and core (after the subcommand, in --config); there
		// the role's settings decide, and these only count as the command line.
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: defaultLogLevel, Usage: "debug, info, warn or error [$BROKER_LOG_LEVEL]", Category: catLogging},
			&cli.StringFlag{Name: "log-format", Value: defaultLogFormat, Usage: "text or json [$BROKER_LOG_FORMAT]", Category: catLogging},
		},
		Before: func(c *cli.Context) error {
			log, err := newLogger(flagOrEnv(c, "log-level"), flagOrEnv(c, "log-format"))
			if err != nil {
				return usageError{err}
			}
			slog.SetDefault(log)
			return nil
		},
		Action: noSuchCommand,
		// A new command is one more entry here.
		Commands: []*cli.Command{coreCommand(), edgeCommand(), configCommand(), certsCommand(), statusCommand(), versionCommand(),
			completionCommand(), demoCommand()},
		EnableBashCompletion: true,
		// main prints the error and picks the exit code; urfave/cli would exit
		// itself on an ExitCoder.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   onUsageError,
	}
	quietUsageErrors(app.Commands)
	return app
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		// Addresses, durations and 64-bit IDs as strings: one type per field for jq
		// and log shippers (internal/logfmt).
		return slog.New(slog.NewJSONHandler(os.Stderr, logfmt.JSONOptions(lv))), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// flagOrEnv is an app flag's value: the command line, else its BROKER_*
// variable, else its default. The flags have no EnvVars so that edge and core can
// tell a value from the command line from one from the environment.
func flagOrEnv(c *cli.Context, name string) string {
	if !c.IsSet(name) {
		if v := os.Getenv(envName(name)); v != "" {
			return v
		}
	}
	return c.String(name)
}
