package fault

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/test/harness"
	"github.com/salt-broker/salt-broker/test/wan"
)

func transport(t *testing.T, b *harness.BrokerProc) string {
	t.Helper()
	_, body, err := b.Get("/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range []string{"quic", "tcp"} {
		if strings.Contains(body, `"transport": "`+tr+`"`) {
			return tr
		}
	}
	return ""
}

// UDP blocked from the start: the pair comes up on TCP within 5 s and carries
// everything as it does on QUIC.
func TestUDPBlockedFromStart(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	l := startWith(t, labOpts{minions: 10, timeoutMin: 60 * time.Second, timeoutMax: 60 * time.Second, tries: 1, blockUDP: true,
		edgeArgs: []string{"--transport", "auto"}})
	if tr := transport(t, l.pair.Edge); tr != "tcp" {
		t.Fatalf("transport %q with UDP blocked", tr)
	}
	up := logTime(t, l.pair.Edge.Stderr(), "connected to the core").Sub(logTime(t, l.pair.Edge.Stderr(), "edge started"))
	t.Logf("edge up on TCP %s after it started", up.Round(time.Millisecond))
	if up > 5*time.Second {
		t.Errorf("took %s to come up on TCP", up)
	}
	l.warm(t, ctx)
	const pubs = 20
	if _, err := l.master.Publish(ctx, harness.PublishOpts{Count: pubs, Rate: 10, Size: 463}); err != nil {
		t.Fatal(err)
	}
	l.assertExactlyOnce(t, ctx, pubs)
}

// UDP blocked mid-run under traffic, later unblocked: the session moves to TCP and
// back to QUIC, and every publication and return arrives exactly once.
func TestUDPBlockedMidRunAndBack(t *testing.T) {
	ctx := ctxFor(t, 3*time.Minute)
	l := startWith(t, labOpts{minions: 10, timeoutMin: 60 * time.Second, timeoutMax: 60 * time.Second, tries: 1,
		edgeArgs: []string{"--transport", "auto", "--quic-probe-interval", "2s"}})
	if tr := transport(t, l.pair.Edge); tr != "quic" {
		t.Fatalf("transport %q at start", tr)
	}
	l.warm(t, ctx)
	const pubs = 80
	tag, err := l.master.PublishAsync(harness.PublishOpts{Count: pubs, Rate: 4, Size: 463})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	l.proxy.BlockUDP(true)
	waitTransport(t, ctx, l.pair.Edge, "tcp")
	time.Sleep(3 * time.Second)
	l.proxy.BlockUDP(false)
	waitTransport(t, ctx, l.pair.Edge, "quic")
	if _, err := l.master.WaitPublished(ctx, tag); err != nil {
		t.Fatal(err)
	}
	l.assertExactlyOnce(t, ctx, pubs)
	for _, to := range []string{"tcp", "quic"} {
		if n, _ := l.pair.Edge.Metric("salt_broker_edge_tunnel_transport_changes_total", `to="`+to+`"`); n < 1 {
			t.Errorf("no transport change to %s counted", to)
		}
	}
	if !strings.Contains(l.pair.Edge.Stderr(), "transport changed") {
		t.Error("the edge did not log the transport change")
	}
}

// logTime is the time of the first log line containing msg.
func logTime(t *testing.T, log, msg string) time.Time {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, msg) || !strings.HasPrefix(line, "time=") {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, strings.Fields(line)[0][len("time="):])
		if err == nil {
			return ts
		}
	}
	t.Fatalf("no log line %q", msg)
	return time.Time{}
}

func waitTransport(t *testing.T, ctx context.Context, b *harness.BrokerProc, want string) {
	t.Helper()
	start := time.Now()
	for transport(t, b) != want {
		select {
		case <-ctx.Done():
			t.Fatalf("transport never became %s", want)
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Logf("on %s %s later", want, time.Since(start).Round(time.Millisecond))
}

// Through an HTTP CONNECT proxy with UDP blocked: the pair works; a proxy that
// refuses (407) is logged clearly and the edge keeps retrying.
func TestThroughHTTPProxy(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	var mu sync.Mutex
	status := http.StatusProxyAuthRequired
	proxy := harness.ConnectProxy(t, func(*http.Request) int { mu.Lock(); defer mu.Unlock(); return status })
	m := harness.StartMaster(t, harness.MasterOpts{})
	var link *wan.Link
	pair := harness.StartPairNoWait(t, harness.PairOpts{
		MasterPubPort: m.PubPort, RetPort: m.RetPort,
		EdgeArgs: []string{"--transport", "auto", "--proxy", "http://salt:pw@" + proxy},
		Via: func(core string) string {
			px, err := wan.NewLink(core, wan.Profile{})
			if err != nil {
				t.Fatal(err)
			}
			px.BlockUDP(true)
			t.Cleanup(func() { _ = px.Close() })
			link = px
			return px.Addr()
		},
	})
	_ = link
	// Wait for the refusal's own words: a bare "407" also matches a port number.
	const refusal = "refused CONNECT to"
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(pair.Edge.Stderr(), refusal) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if logs := pair.Edge.Stderr(); !strings.Contains(logs, refusal) || !strings.Contains(logs, "407 Proxy Authentication Required") {
		t.Fatalf("no clear log line for the refusing proxy:\n%s", logs)
	}
	mu.Lock()
	status = http.StatusOK
	mu.Unlock()
	if err := pair.Edge.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if tr := transport(t, pair.Edge); tr != "tcp" {
		t.Errorf("transport %q through the proxy", tr)
	}
	mins := harness.StartMinions(t, harness.MinionOpts{Master: pair.EdgeIP, PubPort: pair.EdgePub, RetPort: pair.EdgeRet, Count: 5, IDPrefix: "p"})
	if res, err := mins.Request(ctx, harness.RequestOpts{Count: 5, Size: 500, ReplySize: 99}); err != nil || res.OK != res.Total {
		t.Errorf("requests through the proxy: %+v %v", res, err)
	}
}
