package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
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
				return fmt.Errorf("ask %s: %w (is the edge or core running, with --admin on this address?)", url, err)
			}
			defer resp.Body.Close()
			_, err = io.Copy(c.App.Writer, resp.Body)
			return err
		},
	}
}
