package fault

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/test/harness"
	"github.com/salt-broker/salt-broker/test/wan"
)

type requestRun struct {
	res  harness.RequestResult
	err  error
	done time.Time
}

// requestAsync runs one request command on g and reports when it ended.
func requestAsync(ctx context.Context, g *harness.Minions, o harness.RequestOpts) <-chan requestRun {
	out := make(chan requestRun, 1)
	go func() {
		r, err := g.Request(ctx, o)
		out <- requestRun{r, err, time.Now()}
	}()
	return out
}

// A satellite-class link — 4 Mbit/s, 300 ms RTT — and 12 minions each fetching one
// 1 MiB file chunk at once, while 3 other minions send small requests beside them.
// 12 MiB take about 25 s at that rate, so every chunk takes much longer than the
// core's --write-timeout of 10 s: an absolute deadline per reply cut all twelve at
// 10 s and sent them again from byte zero, forever. With an idle deadline and the
// core's bulk gate (4 MiB in flight, in turn), every chunk arrives exactly once, none
// is re-sent, and the small requests are not held behind the chunks.
func TestLargeRepliesOnASlowLink(t *testing.T) {
	ctx := ctxFor(t, 3*time.Minute)
	l := startWith(t, labOpts{minions: 12, profile: wan.Profile{Delay: 150 * time.Millisecond, Jitter: 2 * time.Millisecond, RateBps: 4_000_000},
		timeoutMin: 60 * time.Second, timeoutMax: 60 * time.Second, tries: 1, coreArgs: []string{"--write-timeout", "10s"}})
	small := harness.StartMinions(t, harness.MinionOpts{Master: l.pair.EdgeIP, PubPort: l.pair.EdgePub, RetPort: l.pair.EdgeRet,
		Count: 3, IDPrefix: "s", ReconnectIvl: 100 * time.Millisecond, ReconnectIvlMax: 500 * time.Millisecond})
	if err := harness.WarmUp(ctx, l.master, l.minions, small); err != nil {
		t.Fatal(err)
	}
	if err := l.master.ResetStats(ctx); err != nil {
		t.Fatal(err)
	}
	const bulkN, smallPer = 12, 5
	start := time.Now()
	// One try each, with a timeout far above the transfer's own time: every copy the
	// master or a minion sees is the broker's doing.
	bulk := requestAsync(ctx, l.minions, harness.RequestOpts{Count: 1, Size: 500, ReplySize: 1 << 20, Tries: 1, Timeout: 100 * time.Second})
	smallDone := requestAsync(ctx, small, harness.RequestOpts{Count: smallPer, Size: 500, ReplySize: 99, Tries: 1, Timeout: 100 * time.Second})
	b, s := <-bulk, <-smallDone
	if b.err != nil || s.err != nil {
		t.Fatalf("bulk: %v; small: %v", b.err, s.err)
	}
	ss, err := small.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resent, _ := l.pair.Core.Metric("salt_broker_core_requests_total", `result="resent"`)
	waited, _ := l.pair.Core.Metric("salt_broker_core_bulk_replies_waited_total")
	ms, err := l.master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("12 × 1 MiB done in %s: %+v; small requests done in %s, latency p50 %.0f ms max %.0f ms: %+v; "+
		"core: %v re-sent, %v replies waited at the gate; master %d requests, %d reply bytes; link forwarded %d dropped %d (queue %d)",
		b.done.Sub(start).Round(time.Millisecond), b.res, s.done.Sub(start).Round(time.Millisecond), ss.LatencyMS.P50, ss.LatencyMS.Max, s.res,
		resent, waited, ms.Requests, ms.ReplyBytes, l.proxy.Forwarded.Load(), l.proxy.Dropped.Load(), l.proxy.QueueDropped.Load())

	if b.res.OK != bulkN || b.res.Failed != 0 || b.res.WrongReply != 0 {
		t.Errorf("1 MiB replies at the minions: want %d ok, got %+v", bulkN, b.res)
	}
	if s.res.OK != 3*smallPer || s.res.Failed != 0 || s.res.WrongReply != 0 {
		t.Errorf("small requests: want %d ok, got %+v", 3*smallPer, s.res)
	}
	if ms.Requests != bulkN+3*smallPer || ms.UniqueRIDs != ms.Requests || ms.DupRIDs != 0 {
		t.Errorf("master: want %d requests, each once; got %d requests, %d unique, %d duplicated", bulkN+3*smallPer, ms.Requests, ms.UniqueRIDs, ms.DupRIDs)
	}
	if resent != 0 {
		t.Errorf("the edge re-sent %v requests: a reply was cut and had to start again", resent)
	}
	if line := lastLine(l.pair.Core.Stderr(), "deadline exceeded"); line != "" {
		t.Errorf("the core cut a transfer by its deadline: %s", line)
	}
	if waited == 0 {
		t.Error("no reply waited at the gate: the chunks all shared the link at once")
	}
	// Generous, not a timing threshold: the small requests are ordinary round trips
	// and must not have waited for the bulk to drain.
	if !s.done.Before(b.done) {
		t.Errorf("the small requests ended %s after the start, after the 1 MiB replies (%s): they queued behind them",
			s.done.Sub(start).Round(time.Millisecond), b.done.Sub(start).Round(time.Millisecond))
	}
}

// A saturated but healthy link: 300 minions each fetch an 8 KiB reply at once
// through a 1 Mbit/s bottleneck. QUIC sends the 300 reply streams round robin, a
// packet each, so the core's pongs wait their turn behind about 300 packets — some
// 3 s at that rate — while packets of data keep arriving: no stall may be declared
// and nothing re-sent (the edge used to tear such a connection down when a pong was
// 2 s late, and re-send every request). A real blackout afterwards is still
// detected, and the edge reconnects once the link returns.
func TestSaturatedLinkIsNotStalled(t *testing.T) {
	ctx := ctxFor(t, 3*time.Minute)
	l := startWith(t, labOpts{minions: 300, profile: wan.Profile{Delay: 20 * time.Millisecond, RateBps: 1_000_000},
		timeoutMin: 100 * time.Second, timeoutMax: 100 * time.Second, tries: 1})
	l.warm(t, ctx)
	const n = 300
	start := time.Now()
	res, err := l.minions.Request(ctx, harness.RequestOpts{Count: 1, Size: 500, ReplySize: 8 << 10, Tries: 1, Timeout: 100 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	st, err := l.minions.BriefStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := l.master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stalls, _ := l.pair.Edge.Metric("salt_broker_edge_tunnel_stalls_total")
	reconnects, _ := l.pair.Edge.Metric("salt_broker_edge_tunnel_reconnects_total")
	resent, _ := l.pair.Core.Metric("salt_broker_core_requests_total", `result="resent"`)
	t.Logf("%d replies of 8 KiB in %s (latency p50 %.0f ms, max %.0f ms): %+v; edge: %v stalls, %v reconnects; core: %v re-sent; link forwarded %d dropped %d (queue %d)",
		n, took.Round(time.Millisecond), st.LatencyMS.P50, st.LatencyMS.Max, res, stalls, reconnects, resent,
		l.proxy.Forwarded.Load(), l.proxy.Dropped.Load(), l.proxy.QueueDropped.Load())
	if res.OK != n || res.Failed != 0 || res.WrongReply != 0 {
		t.Errorf("minions: want %d ok, got %+v", n, res)
	}
	if ms.Requests != n || ms.UniqueRIDs != n || ms.DupRIDs != 0 {
		t.Errorf("master: want %d requests, each once; got %d requests, %d unique, %d duplicated", n, ms.Requests, ms.UniqueRIDs, ms.DupRIDs)
	}
	if stalls != 0 || reconnects != 0 || resent != 0 {
		t.Errorf("a busy, healthy link was torn down: %v stalls, %v reconnects, %v requests re-sent", stalls, reconnects, resent)
	}
	if line := lastLine(l.pair.Edge.Stderr(), "connection stalled"); line != "" {
		t.Errorf("the edge declared a stall on a healthy link: %s", line)
	}

	// A real blackout is still a stall.
	l.proxy.SetDown(true)
	for {
		if v, _ := l.pair.Edge.Metric("salt_broker_edge_tunnel_stalls_total"); v > stalls {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the edge did not notice a blackout")
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Log(lastLine(l.pair.Edge.Stderr(), "connection stalled"))
	time.Sleep(3 * time.Second)
	if v, _ := l.pair.Edge.Metric("salt_broker_edge_tunnel_up"); v != 0 {
		t.Error("the edge reports its tunnel up in the middle of a blackout")
	}
	l.proxy.SetDown(false)
	back := time.Now()
	for {
		v, _ := l.pair.Edge.Metric("salt_broker_edge_tunnel_up")
		if v == 1 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the edge did not reconnect after the blackout")
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Logf("blackout: edge connected again %s after the link returned", time.Since(back).Round(time.Millisecond))
	if !strings.Contains(l.pair.Edge.Stderr(), "no packet from the core for") {
		t.Error("the stall's log line does not say what was seen")
	}
	// And it carries requests again.
	if res, err := l.minions.Request(ctx, harness.RequestOpts{Count: 1, Size: 500, ReplySize: 99, Tries: 1, Timeout: 30 * time.Second}); err != nil || res.OK != n {
		t.Errorf("after the blackout: %+v, %v", res, err)
	}
}
