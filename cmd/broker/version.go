package main

import (
	"encoding/json"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/salt-broker/salt-broker/internal/buildinfo"
)

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the broker's version, commit, Go and quic-go versions and tunnel protocol version",
		Description: `An edge and a core connect only when their protocol versions are equal (the core
refuses the edge's hello otherwise, naming both): compare 'broker version' on both
sides before an upgrade (docs/migration.md, "Upgrades").`,
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of lines"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("version takes no arguments, got %q", c.Args().Slice())
			}
			return printVersion(c, buildinfo.Get())
		},
	}
}

func printVersion(c *cli.Context, i buildinfo.Info) error {
	w := c.App.Writer
	if c.Bool("json") {
		b, err := json.Marshal(i)
		if err != nil {
			return fmt.Errorf("encode the version: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	commit := i.Commit
	if i.Modified {
		// A build from a tree with uncommitted changes is not what the commit says.
		commit += " (modified)"
	}
	_, err := fmt.Fprintf(w, "broker %s\ncommit:   %s\ngo:       %s\nquic-go:  %s\nprotocol: %d\n",
		i.Version, commit, i.GoVersion, i.QUICGo, i.Protocol)
	return err
}
