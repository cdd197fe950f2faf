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
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newApp().RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "broker:", oneLine(err))
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
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"BROKER_LOG_LEVEL"}},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json", EnvVars: []string{"BROKER_LOG_FORMAT"}},
		},
		Before: func(c *cli.Context) error {
			log, err := newLogger(c.String("log-level"), c.String("log-format"))
			if err != nil {
				return usageError{err}
			}
			slog.SetDefault(log)
			return nil
		},
		Action:   noSuchCommand,
		Commands: []*cli.Command{coreCommand(), edgeCommand(), certsCommand(), statusCommand(), demoCommand()},
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
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
