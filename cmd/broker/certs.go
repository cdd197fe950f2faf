package main

import (
	"fmt"
	"strings"
	"time"

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
   broker certs issue --dir ./pki --name site-a --role edge
   broker certs show  ./pki/site-a.crt
   broker certs renew --dir ./pki --name site-a`,
		Action: noSuchCommand,
		Subcommands: []*cli.Command{
			{
				Name:  "init",
				Usage: "create a new CA: DIR/ca.crt and DIR/ca.key (0600)",
				Flags: []cli.Flag{dir, daysFlag(certs.DefaultCADays)},
				Action: func(c *cli.Context) error {
					if err := certs.InitCADays(c.Path("dir"), c.Int("days")); err != nil {
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
					daysFlag(certs.DefaultLeafDays),
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
					if err := certs.IssueDays(c.Path("dir"), c.String("name"), role, hosts, c.Int("days")); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "%s certificate written to %s/%s.crt (private key %s/%s.key, mode 0600)\n",
						role, c.Path("dir"), c.String("name"), c.Path("dir"), c.String("name"))
					return nil
				},
			},
			{
				Name:      "show",
				Usage:     "say what a certificate, CA bundle or key file holds: subject, role, hosts, SHA-256 fingerprint, validity, days left",
				ArgsUsage: "FILE...",
				Action: func(c *cli.Context) error {
					if c.NArg() == 0 {
						return usagef("certs show needs a file: broker certs show /etc/salt-broker/core1.crt")
					}
					for i, f := range c.Args().Slice() {
						if i > 0 {
							fmt.Fprintln(c.App.Writer)
						}
						if err := certs.Show(c.App.Writer, f, time.Now()); err != nil {
							return err
						}
					}
					return nil
				},
			},
			{
				Name:  "renew",
				Usage: "issue DIR/NAME.crt again with the same role and hosts, from the CA in DIR (a new key unless --keep-key); the old pair is kept as .old",
				Description: `A new key is the default: renewing is the routine moment to retire a key, and one that
leaked unnoticed would otherwise live on. --keep-key signs the existing key again, for
keys provisioned apart from their certificate. Copy the new files to the host and send
SIGHUP (systemctl reload): new connections use them, established ones carry on.`,
				Flags: []cli.Flag{
					dir,
					&cli.StringFlag{Name: "name", Usage: "the certificate to renew (required)"},
					&cli.PathFlag{Name: "from", Usage: "the certificate to renew, if not DIR/NAME.crt (a CA rollover: the one the old CA issued)"},
					&cli.BoolFlag{Name: "keep-key", Usage: "sign the existing key (beside the certificate) again instead of making a new one"},
					daysFlag(certs.DefaultLeafDays),
				},
				Before: requireFlags("name"),
				Action: func(c *cli.Context) error {
					r, err := certs.Renew(c.Path("dir"), c.String("name"), certs.RenewOptions{From: c.Path("from"), Days: c.Int("days"), KeepKey: c.Bool("keep-key")})
					if err != nil {
						return err
					}
					key := "new key"
					if r.KeptKey {
						key = "same key"
					}
					fmt.Fprintf(c.App.Writer, "%s certificate %s renewed (%s, hosts %s) until %s\n  written: %s, %s\n  fingerprint: SHA-256 %s (was %s)\n",
						r.Role, c.String("name"), key, orDash(strings.Join(r.Hosts, ",")), r.NotAfter, r.Cert, r.Key, r.NewFingerprint, r.OldFingerprint)
					if r.Backup != "" {
						fmt.Fprintf(c.App.Writer, "  previous pair kept as %s and its .key.old\n", r.Backup)
					}
					fmt.Fprintf(c.App.Writer, "  next: copy both files to the %s's host and send it SIGHUP (systemctl reload salt-broker-%s)\n", r.Role, r.Role)
					return nil
				},
			},
		},
	}
}

func daysFlag(def int) cli.Flag {
	return &cli.IntFlag{Name: "days", Value: def, Usage: "validity in days"}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
