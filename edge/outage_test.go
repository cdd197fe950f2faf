package edge

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/internal/testlog"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/tunnel"
)

// logBuffer collects an edge's log lines for a test, safe for concurrent writes.
type logBuffer = testlog.Buffer

// eventually polls cond every 20 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fakeCore answers an edge's hello and its pings on addr, and holds every other
// stream open: enough for the edge to count as connected.
func fakeCore(t *testing.T, addr string, tlsCfg tunnel.Config) {
	t.Helper()
	ln, err := tunnel.Listen(addr, tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		_ = ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			sess, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			wg.Go(func() {
				defer func() { _ = sess.CloseWithError("test over") }()
				stop := context.AfterFunc(ctx, func() { _ = sess.CloseWithError("test over") })
				defer stop()
				for {
					st, err := sess.AcceptStream(ctx)
					if err != nil {
						return
					}
					wg.Go(func() {
						defer st.Close()
						stop := context.AfterFunc(ctx, func() { _ = st.Close() })
						defer stop()
						rd := wire.NewReader(st, 1<<20)
						typ, _, err := rd.Next()
						if err != nil || typ != wire.THello {
							<-ctx.Done() // a publication or request stream: hold it
							return
						}
						if err := wire.Write(st, wire.THelloAck, wire.HelloAck{Version: wire.Version, CoreName: "fake-core", CoreEpoch: 1}.Encode()); err != nil {
							return
						}
						for {
							typ, body, err := rd.Next()
							if err != nil {
								return
							}
							if typ == wire.TPing {
								if err := wire.Write(st, wire.TPong, body); err != nil {
									return
								}
							}
						}
					})
				}
			})
		}
	})
}

// An edge that cannot reach its core says so at WARN with the reason at the first
// failed attempt, then once per period with the latest reason and how long it has
// been, shows it in /status, and logs one INFO line with the outage's length once
// the core is back. With --transport tcp pinned nothing blames UDP.
func TestEdgeSaysWhyItCannotReachTheCore(t *testing.T) {
	pki, err := certs.NewEphemeral(nil)
	if err != nil {
		t.Fatal(err)
	}
	core := "127.0.0.1:" + strconv.Itoa(freePort(t)) // nothing listens there yet: refused
	logs := &logBuffer{}
	e, err := New(Config{
		CoreAddr: core, Bind: "127.0.0.1", PubPort: freePort(t), RetPort: freePort(t),
		Tunnel: tunnel.Config{TLS: pki.Client}, Dial: tunnel.DialOptions{Mode: tunnel.ModeTCP},
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Registry: prometheus.NewRegistry(), DrainTimeout: -1, ProbeInterval: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.outage.every = 300 * time.Millisecond // 30 s in production
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		_ = e.Run(ctx)
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-ran:
		case <-time.After(30 * time.Second):
			t.Error("the edge did not stop within 30 s")
		}
	})

	eventually(t, 10*time.Second, "the first failure logged at WARN", func() bool {
		return strings.Contains(logs.String(), `level=WARN msg="cannot reach the core"`)
	})
	first := logs.String()
	if !strings.Contains(first, "connection refused") || !strings.Contains(first, "nothing listens on the core's TCP port") {
		t.Fatalf("the first failure does not say why:\n%s", first)
	}
	eventually(t, 10*time.Second, "two reminders", func() bool {
		return strings.Count(logs.String(), `msg="still cannot reach the core for `) >= 2
	})
	if n := strings.Count(logs.String(), `msg="cannot reach the core"`); n != 1 {
		t.Fatalf("the first-failure line %d times, want once per outage:\n%s", n, logs.String())
	}
	s := e.Status()
	since, perr := time.Parse(time.RFC3339, s.DownSince)
	if s.Connected || perr != nil || time.Since(since) > time.Minute || !strings.Contains(s.LastError, "connection refused") {
		t.Fatalf("status while down: connected %v, down_since %q (%v), last_error %q", s.Connected, s.DownSince, perr, s.LastError)
	}

	fakeCore(t, core, tunnel.Config{TLS: pki.Server})
	eventually(t, 10*time.Second, "the return logged", func() bool {
		return strings.Contains(logs.String(), `level=INFO msg="reached the core again"`)
	})
	back := logs.String()[strings.Index(logs.String(), `msg="reached the core again"`):]
	if line, _, _ := strings.Cut(back, "\n"); !strings.Contains(line, "outage=") || !strings.Contains(line, "connection refused") {
		t.Fatalf("the return line lacks the outage's length or last error: %s", line)
	}
	if s := e.Status(); !s.Connected || s.DownSince != "" || s.LastError != "" {
		t.Fatalf("status once back: connected %v, down_since %q, last_error %q", s.Connected, s.DownSince, s.LastError)
	}
	if strings.Contains(logs.String(), "UDP") {
		t.Fatalf("an edge with --transport tcp blamed UDP:\n%s", logs.String())
	}
}

// The reasons an operator gets for the usual ways of not reaching a core, from the
// tunnel's real errors.
func TestExplainDialErrors(t *testing.T) {
	pki, err := certs.NewEphemeral(nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := certs.NewEphemeral([]string{"core.example"}) // another CA, and a certificate for another name
	if err != nil {
		t.Fatal(err)
	}
	wrongName, err := tunnel.Listen("127.0.0.1:0", tunnel.Config{TLS: other.Server})
	if err != nil {
		t.Fatal(err)
	}
	defer wrongName.Close()
	stranger, err := certs.NewEphemeral(nil) // a core of another CA, for the right name
	if err != nil {
		t.Fatal(err)
	}
	wrongCA, err := tunnel.Listen("127.0.0.1:0", tunnel.Config{TLS: stranger.Server})
	if err != nil {
		t.Fatal(err)
	}
	defer wrongCA.Close()
	// A UDP socket that reads nothing: QUIC gets no answer.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	refused := "127.0.0.1:" + strconv.Itoa(freePort(t))

	cases := []struct {
		addr string
		mode tunnel.Mode
		ca   *certs.Ephemeral
		want string
	}{
		{"127.0.0.1", tunnel.ModeTCP, pki, "has no port"},
		{"no-such-host.invalid:4510", tunnel.ModeAuto, pki, "does not resolve"},
		{refused, tunnel.ModeTCP, pki, "nothing listens on the core's TCP port"},
		{wrongName.Addr().String(), tunnel.ModeTCP, other, "does not cover the address dialed"},
		{wrongName.Addr().String(), tunnel.ModeQUIC, other, "does not cover the address dialed"},
		{wrongCA.Addr().String(), tunnel.ModeTCP, pki, "not signed by the CA this edge trusts"},
		{silent.LocalAddr().String(), tunnel.ModeQUIC, pki, "UDP to its port is blocked"},
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := tunnel.Dial(ctx, c.addr, tunnel.Config{TLS: c.ca.Client}, tunnel.DialOptions{Mode: c.mode})
		cancel()
		if err == nil {
			_ = s.CloseWithError("test")
			t.Errorf("%s %s: dialed", c.mode, c.addr)
			continue
		}
		if got := explainDial(err, c.mode); !strings.Contains(got, c.want) {
			t.Errorf("%s %s: %v\nexplained as %q, want %q", c.mode, c.addr, err, got, c.want)
		}
	}
	// Pinned to TCP, a timeout is the TCP port's, never UDP's.
	if got := explainDial(context.DeadlineExceeded, tunnel.ModeTCP); strings.Contains(got, "UDP") {
		t.Errorf("tcp timeout explained as %q", got)
	}
	if got := explainDial(errors.New("read hello answer (a core that rejects this edge's certificate closes here): EOF"), tunnel.ModeTCP); !strings.Contains(got, "refused this edge's certificate") {
		t.Errorf("a closed hello explained as %q", got)
	}
}
