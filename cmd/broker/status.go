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
			var st statusDoc
			if err := json.Unmarshal(body, &st); err != nil || (st.Role != "edge" && st.Role != "core") {
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

// statusDoc is the JSON of edge.Status and core.Status (their fields by JSON name,
// so a field one side does not have reads as zero).
type statusDoc struct {
	Role string `json:"role"`
	// edge
	Core        string  `json:"core"`
	Connected   bool    `json:"connected"`
	Transport   string  `json:"transport"`
	RTTMillis   float64 `json:"rtt_ms"`
	CoreEpoch   uint64  `json:"core_epoch"`
	PubCursor   uint64  `json:"pub_cursor"`
	Pending     int     `json:"pending_requests"`
	MinionsPub  int64   `json:"minions_subscribed"`
	MinionsRet  int64   `json:"minion_req_sockets"`
	PoolCap     int     `json:"pool_cap"`
	DownSince   string  `json:"down_since"`
	LastError   string  `json:"last_error"`
	Connections []struct {
		Conn          uint32  `json:"conn"`
		Transport     string  `json:"transport"`
		Anchor        bool    `json:"anchor"`
		Publications  bool    `json:"publications"`
		Retiring      bool    `json:"retiring"`
		PingRTTMillis float64 `json:"ping_rtt_ms"`
		SmoothedRTTMs float64 `json:"smoothed_rtt_ms"`
		MinRTTMs      float64 `json:"min_rtt_ms"`
		Cwnd          uint64  `json:"congestion_window_bytes"`
		Loss          float64 `json:"loss_ratio"`
		Requests      int64   `json:"requests_in_flight"`
		RequestBytes  int64   `json:"request_bytes_in_flight"`
	} `json:"connections"`
	// core
	Epoch            uint64  `json:"epoch"`
	HeadSeq          uint64  `json:"head_seq"`
	RingMessages     int     `json:"ring_messages"`
	RingBytes        int64   `json:"ring_bytes"`
	RingOldestSecs   float64 `json:"ring_oldest_age_s"`
	RequestsAtMaster int     `json:"requests_at_master"`
	DedupEntries     int     `json:"dedup_entries"`
	MasterSub        bool    `json:"master_sub_connected"`
	MasterDealer     bool    `json:"master_dealer_connected"`
	Edges            []struct {
		Name      string  `json:"name"`
		EdgeName  string  `json:"edge_name"`
		Conn      uint32  `json:"conn"`
		Remote    string  `json:"remote"`
		Transport string  `json:"transport"`
		RTTMillis float64 `json:"rtt_ms"`
		PubCursor uint64  `json:"pub_cursor"`
		Lag       uint64  `json:"pub_lag"`
	} `json:"edges"`
}

// down says why the process cannot serve, or "" when it can.
func (s statusDoc) down() string {
	switch s.Role {
	case "edge":
		if s.Connected {
			return ""
		}
		msg := "edge: the tunnel to the core " + s.Core + " is down"
		if s.DownSince != "" {
			msg += " since " + s.DownSince
		}
		if s.LastError != "" {
			msg += ": " + s.LastError
		}
		return msg
	default:
		var not []string
		if !s.MasterSub {
			not = append(not, "sub (publications)")
		}
		if !s.MasterDealer {
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
		state := "DOWN"
		if s.Connected {
			state = fmt.Sprintf("up (%s, rtt %.1f ms)", s.Transport, s.RTTMillis)
		}
		fmt.Fprintf(tw, "edge\tcore %s\ttunnel %s\n", s.Core, state)
		if !s.Connected && (s.DownSince != "" || s.LastError != "") {
			fmt.Fprintf(tw, "down since\t%s\t%s\n", s.DownSince, s.LastError)
		}
		fmt.Fprintf(tw, "minions\t%d subscribed\t%d request sockets\n", s.MinionsPub, s.MinionsRet)
		fmt.Fprintf(tw, "requests\t%d pending\t\n", s.Pending)
		fmt.Fprintf(tw, "publications\tcursor %d\tcore epoch %d\n", s.PubCursor, s.CoreEpoch)
		fmt.Fprintf(tw, "pool\t%s\tof at most %d\n", plural(len(s.Connections), "connection"), s.PoolCap)
		if len(s.Connections) > 0 {
			fmt.Fprintln(tw, "\nCONN\tTRANSPORT\tROLE\tPING RTT\tSRTT\tMIN RTT\tCWND\tLOSS\tREQUESTS\tBYTES")
			for _, c := range s.Connections {
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
					c.PingRTTMillis, c.SmoothedRTTMs, c.MinRTTMs, bytesIEC(int64(c.Cwnd)), 100*c.Loss, c.Requests, bytesIEC(c.RequestBytes))
			}
		}
	} else {
		fmt.Fprintf(tw, "core\tepoch %d\tmaster sub %s, dealer %s\n", s.Epoch,
			yesNo(s.MasterSub, "connected", "DOWN"), yesNo(s.MasterDealer, "connected", "DOWN"))
		fmt.Fprintf(tw, "ring\t%d publications, %s\toldest %s, head %d\n", s.RingMessages, bytesIEC(s.RingBytes),
			(time.Duration(s.RingOldestSecs * float64(time.Second))).Round(time.Second), s.HeadSeq)
		fmt.Fprintf(tw, "requests\t%d at the master\t%d remembered (dedup)\n", s.RequestsAtMaster, s.DedupEntries)
		fmt.Fprintf(tw, "edges\t%s\t\n", plural(len(s.Edges), "connection"))
		if len(s.Edges) > 0 {
			fmt.Fprintln(tw, "\nCERTIFICATE\tEDGE NAME\tCONN\tREMOTE\tTRANSPORT\tRTT\tCURSOR\tLAG")
			for _, e := range s.Edges {
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
