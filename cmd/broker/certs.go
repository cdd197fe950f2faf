package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/salt-broker/salt-broker/certs"
)

func certsCommand() *cli.Command {
	dir := &cli.PathFlag{Name: "dir", Value: "/etc/salt-broker", Usage: "directory holding the CA and the issued certificates", EnvVars: env("certs-dir")}
	return &cli.Command{
		Name:  "certs",
		Usage: "create the CA and the edge/core certificates",
		Description: `Mutual TLS: the core accepts only edges whose certificate this CA signed, and edges
accept only a core this CA signed. Keep ca.key on one trusted machine.

   broker certs init  --dir ./pki
   broker certs issue --dir ./pki --name core1 --role core --host core.example.net,203.0.113.7
   broker certs issue --dir ./pki --name site-a --role edge`,
		Action: noSuchCommand,
		Subcommands: []*cli.Command{
			{
				Name:  "init",
				Usage: "create a new CA: DIR/ca.crt and DIR/ca.key (0600)",
				Flags: []cli.Flag{dir},
				Action: func(c *cli.Context) error {
					if err := certs.InitCA(c.Path("dir")); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "CA written to %s/ca.crt (private key %s/ca.key, mode 0600)\n", c.Path("dir"), c.Path("dir"))
					return nil
				},
			},
			{
				Name:  "issue",
				Usage: "issue DIR/NAME.crt and DIR/NAME.key signed by the CA in DIR",
				Flags: []cli.Flag{
					dir,
					&cli.StringFlag{Name: "name", Usage: "certificate name (an edge's name is what --allow-edge matches; required)"},
					&cli.StringFlag{Name: "role", Usage: "edge or core (required)"},
					&cli.StringSliceFlag{Name: "host", Usage: "core only: DNS names and IPs edges dial (comma-separated or repeated)"},
				},
				Before: requireFlags("name", "role"),
				Action: func(c *cli.Context) error {
					role := certs.Role(strings.ToLower(c.String("role")))
					if role != certs.RoleEdge && role != certs.RoleCore {
						return usagef("--role %q: want edge or core", c.String("role"))
					}
					hosts := c.StringSlice("host")
					if role == certs.RoleCore && len(hosts) == 0 {
						return usagef("a core certificate needs --host with the names or IPs edges dial")
					}
					if err := certs.Issue(c.Path("dir"), c.String("name"), role, hosts); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "%s certificate written to %s/%s.crt (private key %s/%s.key, mode 0600)\n",
						role, c.Path("dir"), c.String("name"), c.Path("dir"), c.String("name"))
					return nil
				},
			},
		},
	}
}
