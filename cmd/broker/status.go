package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"time"

	"github.com/urfave/cli/v2"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "print the state of a running edge or core (from its admin endpoint)",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "admin", Value: "127.0.0.1:9511", Usage: "admin address of the edge (9511) or core (9510)", EnvVars: env("admin")},
		},
		Action: func(c *cli.Context) error {
			ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
			defer cancel()
			url := "http://" + c.String("admin") + "/status"
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				var ue *neturl.Error // its text repeats the URL
				if errors.As(err, &ue) {
					err = ue.Err
				}
				return fmt.Errorf("ask %s: %w (is the edge or core running, with --admin on this address?)", url, err)
			}
			defer resp.Body.Close()
			// Anything but 2xx is not a status to print: another service on that
			// port, or an admin endpoint in trouble; a script must see it fail.
			if resp.StatusCode < 200 || resp.StatusCode > 299 {
				return fmt.Errorf("ask %s: answered %s, not a status (is --admin the admin address of an edge or core?)", url, resp.Status)
			}
			if _, err := io.Copy(c.App.Writer, resp.Body); err != nil {
				return fmt.Errorf("read the status from %s: %w", url, err)
			}
			return nil
		},
	}
}
