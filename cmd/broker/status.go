package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/salt-broker/salt-broker/core"
	"github.com/salt-broker/salt-broker/edge"
)

// exitDown is `broker status`'s exit code for a process that answers but cannot
// serve: an edge with no connection to its core, a core without the master.
const exitDown = 3

const statusHelp = `Asks a running edge or core (its admin endpoint, --admin) for its state and
prints it as a table; --json prints the endpoint's JSON as it came.

Exit codes, for scripts and monitoring checks:
   0  up: the edge has a connection to its core; the core has both of its
      sockets (sub, dealer) connected to the master
   1  no status: the endpoint does not answer, answers an HTTP error, or what it
      answers is not the status of an edge or core
   2  usage error (an unknown flag)
   3  down: the edge's tunnel to the core is down, or the core is not connected
      to the master (the table, or the JSON, is printed first)`

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:        "status",
		Usage:       "print the state of a running edge or core (from its admin endpoint); exit 3 when it is down",
		Description: statusHelp,
		ArgsUsage:   " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "admin", Value: "127.0.0.1:9511", Usage: "admin address of the edge (9511) or core (9510)", EnvVars: env("admin")},
			&cli.BoolFlag{Name: "json", Usage: "print the raw JSON state instead of the table"},
		},
		Action: func(c *cli.Context) error {
			url := "http://" + c.String("admin") + "/status"
			body, err := fetchStatus(c.Context, url)
			if err != nil {
				return err
			}
			st, ok := parseStatus(body)
			if !ok {
				return fmt.Errorf("ask %s: the answer is not the status of an edge or core (is --admin the admin address of an edge or core?)", url)
			}
			if c.Bool("json") {
				_, err = c.App.Writer.Write(body)
			} else {
				err = st.print(c.App.Writer)
			}
			if err != nil {
				return fmt.Errorf("print the status: %w", err)
			}
			if down := st.down(); down != "" {
				return cli.Exit(down, exitDown)
			}
			return nil
		},
	}
}

// fetchStatus GETs url and returns the body of a 2xx answer.
func fetchStatus(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		var ue *neturl.Error // its text repeats the URL
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("ask %s: %w (is the edge or core running, with --admin on this address?)", url, err)
	}
	defer resp.Body.Close()
	// Anything but 2xx is not a status to print: another service on that
	// port, or an admin endpoint in trouble; a script must see it fail.
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("ask %s: answered %s, not a status (is --admin the admin address of an edge or core?)", url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read the status from %s: %w", url, err)
	}
	return body, nil
}

// statusDoc is an edge's or a core's /status, decoded into the type that side
// serves it from (edge.Status, core.Status), so the table never drifts from it.
type statusDoc struct {
	Role string
	edge edge.Status
	core core.Status
}

// parseStatus decodes body by its role; false if it is neither side's status.
func parseStatus(body []byte) (statusDoc, bool) {
	var probe struct {
		Role string `json:"role"`
	}
	if json.Unmarshal(body, &probe) != nil {
		return statusDoc{}, false
	}
	st := statusDoc{Role: probe.Role}
	switch probe.Role {
	case "edge":
		return st, json.Unmarshal(body, &st.edge) == nil
	case "core":
		return st, json.Unmarshal(body, &st.core) == nil
	}
	return st, false
}

// down says why the process cannot serve, or "" when it can.
func (s statusDoc) down() string {
	switch s.Role {
	case "edge":
		if s.edge.Connected {
			return ""
		}
		msg := "edge: the tunnel to the core " + s.edge.Core + " is down"
		if s.edge.DownSince != "" {
			msg += " since " + s.edge.DownSince
		}
		if s.edge.LastError != "" {
			msg += ": " + s.edge.LastError
		}
		return msg
	default:
		var not []string
		if !s.core.MasterSub {
			not = append(not, "sub (publications)")
		}
		if !s.core.MasterDealer {
			not = append(not, "dealer (requests)")
		}
		if len(not) == 0 {
			return ""
		}
		return "core: not connected to the master: " + strings.Join(not, ", ")
	}
}

func yesNo(ok bool, yes, no string) string {
	if ok {
		return yes
	}
	return no
}

// print writes the human table.
func (s statusDoc) print(w io.Writer) error {
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	if s.Role == "edge" {
		e := s.edge
		state := "DOWN"
		if e.Connected {
			state = fmt.Sprintf("up (%s, rtt %.1f ms)", e.Transport, e.RTTMillis)
		}
		fmt.Fprintf(tw, "edge\tcore %s\ttunnel %s\n", e.Core, state)
		if !e.Connected && (e.DownSince != "" || e.LastError != "") {
			fmt.Fprintf(tw, "down since\t%s\t%s\n", e.DownSince, e.LastError)
		}
		fmt.Fprintf(tw, "minions\t%d subscribed\t%d request sockets\n", e.MinionsPub, e.MinionsRet)
		fmt.Fprintf(tw, "requests\t%d pending\t\n", e.PendingRequests)
		fmt.Fprintf(tw, "publications\tcursor %d\tcore epoch %d\n", e.PubCursor, e.CoreEpoch)
		fmt.Fprintf(tw, "pool\t%s\tof at most %d\n", plural(len(e.Connections), "connection"), e.PoolCap)
		if len(e.Connections) > 0 {
			fmt.Fprintln(tw, "\nCONN\tTRANSPORT\tROLE\tPING RTT\tSRTT\tMIN RTT\tCWND\tLOSS\tREQUESTS\tBYTES")
			for _, c := range e.Connections {
				var role []string
				if c.Anchor {
					role = append(role, "anchor")
				}
				if c.Publications {
					role = append(role, "publications")
				}
				if c.Retiring {
					role = append(role, "retiring")
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%.1f ms\t%.1f ms\t%.1f ms\t%s\t%.2f%%\t%d\t%s\n", c.Conn, c.Transport, yesNo(len(role) > 0, strings.Join(role, ","), "-"),
					c.PingRTTMillis, c.SmoothedRTTMs, c.MinRTTMs, bytesIEC(int64(c.CongestionWindow)), 100*c.LossRatio, c.Requests, bytesIEC(c.RequestBytes))
			}
		}
	} else {
		k := s.core
		fmt.Fprintf(tw, "core\tepoch %d\tmaster sub %s, dealer %s\n", k.Epoch,
			yesNo(k.MasterSub, "connected", "DOWN"), yesNo(k.MasterDealer, "connected", "DOWN"))
		fmt.Fprintf(tw, "ring\t%d publications, %s\toldest %s, head %d\n", k.RingMessages, bytesIEC(k.RingBytes),
			(time.Duration(k.RingOldestSecs * float64(time.Second))).Round(time.Second), k.HeadSeq)
		fmt.Fprintf(tw, "requests\t%d at the master\t%d remembered (dedup)\n", k.RequestsAtMaster, k.DedupEntries)
		fmt.Fprintf(tw, "edges\t%s\t\n", plural(len(k.Edges), "connection"))
		if len(k.Edges) > 0 {
			fmt.Fprintln(tw, "\nCERTIFICATE\tEDGE NAME\tCONN\tREMOTE\tTRANSPORT\tRTT\tCURSOR\tLAG")
			for _, e := range k.Edges {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%.1f ms\t%d\t%d\n", e.Name, yesNo(e.EdgeName != "", e.EdgeName, "-"), e.Conn, e.Remote, e.Transport, e.RTTMillis, e.PubCursor, e.Lag)
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := w.Write(b.Bytes())
	return err
}

// bytesIEC renders a byte count for people: 512 B, 1.5 KiB, 3.0 MiB.
func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// plural is "1 connection", "3 connections".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
