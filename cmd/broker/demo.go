package main

import (
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/salt-broker/salt-broker/cmd/broker/demo"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run a simulated master, a core, an edge and minions on loopback and show what crosses the tunnel",
		Description: `Needs nothing but this binary: ephemeral certificates, ephemeral ports, no config.
Exits 0 only if every publication reached every minion in order and every return
reached the master exactly once.`,
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "minions", Value: 5, Usage: "simulated minions"},
			&cli.IntFlag{Name: "jobs", Value: 20, Usage: "jobs published (each minion answers each with a return)"},
			&cli.BoolFlag{Name: "verbose", Usage: "show the broker's own logs"},
		},
		Action: func(c *cli.Context) error {
			var log *slog.Logger
			if c.Bool("verbose") {
				log = slog.Default()
			}
			return demo.Run(c.Context, demo.Options{Minions: c.Int("minions"), Jobs: c.Int("jobs"), Out: c.App.Writer, Logger: log})
		},
	}
}
