// Package fault inflicts real faults on the pair under Salt-like load from real
// libzmq peers: blackouts and loss on the link (through test/wan's UDP proxy), and
// kill -9 of the edge and of the core. It asserts what docs/guarantees.md promises.
package fault

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/test/harness"
	"github.com/salt-broker/salt-broker/test/wan"
)

func TestMain(m *testing.M) { harness.Main(m) }

type lab struct {
	master  *harness.Master
	pair    *harness.Pair
	proxy   *wan.Link
	minions *harness.Minions
}

// start runs master, core, edge (dialing through an impairment proxy, QUIC) and n
// minions that answer every publication with a return. Their return timeout is long
// so that every copy the master sees is the broker's doing, not the minions' own
// retries (recognising those is issue 5's retry-chain work).
func start(t *testing.T, n int, p wan.Profile, edgeArgs ...string) *lab {
	t.Helper()
	return startWith(t, labOpts{minions: n, profile: p, timeoutMin: 60 * time.Second, timeoutMax: 60 * time.Second, tries: 1, edgeArgs: edgeArgs})
}

type labOpts struct {
	minions                int
	profile                wan.Profile
	timeoutMin, timeoutMax time.Duration // the minions' return_retry_timer range
	tries                  int           // return_retry_tries
	blockUDP               bool          // UDP dropped from the start
	edgeArgs               []string      // after --transport quic, so a --transport here wins
}

func startWith(t *testing.T, o labOpts) *lab {
	t.Helper()
	l := &lab{master: harness.StartMaster(t, harness.MasterOpts{})}
	l.pair = harness.StartPair(t, harness.PairOpts{
		MasterPubPort: l.master.PubPort, RetPort: l.master.RetPort,
		EdgeArgs: append([]string{"--transport", "quic"}, o.edgeArgs...),
		Via: func(core string) string {
			px, err := wan.NewLink(core, o.profile)
			if err != nil {
				t.Fatal(err)
			}
			px.BlockUDP(o.blockUDP)
			t.Cleanup(func() { _ = px.Close() })
			l.proxy = px
			return px.Addr()
		},
	})
	l.minions = harness.StartMinions(t, harness.MinionOpts{
		Master: l.pair.EdgeIP, PubPort: l.pair.EdgePub, RetPort: l.pair.EdgeRet, Count: o.minions, IDPrefix: "m",
		ReturnOnPublish: true, ReturnTimeoutMin: o.timeoutMin, ReturnTimeoutMax: o.timeoutMax, Tries: o.tries,
		ReconnectIvl: 100 * time.Millisecond, ReconnectIvlMax: 500 * time.Millisecond,
	})
	return l
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// settle waits until the minions hold want publications each and every return is answered.
func (l *lab) settle(t *testing.T, ctx context.Context, want int64) harness.MinionStats {
	t.Helper()
	var st harness.MinionStats
	for {
		var err error
		st, err = l.minions.BriefStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := int64(st.Minions)
		if st.Pubs >= n*want && st.ReqOK+st.ReqFailed >= st.Returns && st.Pending == 0 {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("not settled: %+v", st)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (l *lab) assertExactlyOnce(t *testing.T, ctx context.Context, pubs int64) {
	t.Helper()
	st := l.settle(t, ctx, pubs)
	n := int64(st.Minions)
	if st.Pubs != n*pubs || st.Missing != 0 || st.OutOfOrder != 0 || st.Dup != 0 {
		t.Errorf("publications: want %d each, got %+v", pubs, st)
	}
	if st.ReqOK != n*pubs || st.ReqFailed != 0 || st.WrongReply != 0 {
		t.Errorf("returns at the minions: want %d ok, got ok %d failed %d wrong %d", n*pubs, st.ReqOK, st.ReqFailed, st.WrongReply)
	}
	ms, err := l.master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ms.UniqueRIDs != n*pubs || ms.DupRIDs != 0 {
		t.Errorf("returns at the master: want %d unique, 0 duplicated; got %d unique, %d duplicated", n*pubs, ms.UniqueRIDs, ms.DupRIDs)
	}
}

func (l *lab) warm(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := harness.WarmUp(ctx, l.master, l.minions); err != nil {
		t.Fatal(err)
	}
	if err := l.minions.ResetStats(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.master.ResetStats(ctx); err != nil {
		t.Fatal(err)
	}
}

// Two blackouts of 3 and 5 s while jobs are published at 4/s and every minion
// answers each: after the link returns, every publication reaches every minion in
// order and every return reaches the master exactly once.
func TestBlackouts(t *testing.T) {
	for _, tr := range []string{"quic", "tcp"} {
		t.Run(tr, func(t *testing.T) { testBlackouts(t, tr) })
	}
}

func testBlackouts(t *testing.T, transport string) {
	ctx := ctxFor(t, 3*time.Minute)
	l := start(t, 20, wan.Profile{Delay: 10 * time.Millisecond, Jitter: 5 * time.Millisecond}, "--transport", transport)
	l.warm(t, ctx)
	const pubs = 60
	tag, err := l.master.PublishAsync(harness.PublishOpts{Count: pubs, Rate: 4, Size: 463, Topics: []string{"broadcast"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []time.Duration{3 * time.Second, 5 * time.Second} {
		time.Sleep(2 * time.Second)
		l.proxy.SetDown(true)
		time.Sleep(d)
		l.proxy.SetDown(false)
		back := time.Now()
		if err := l.pair.Edge.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("blackout %s: edge ready again %s after the link returned", d, time.Since(back).Round(time.Millisecond))
	}
	if _, err := l.master.WaitPublished(ctx, tag); err != nil {
		t.Fatal(err)
	}
	l.assertExactlyOnce(t, ctx, pubs)
	stalls, _ := l.pair.Edge.Metric("salt_broker_edge_tunnel_stalls_total")
	if stalls < 2 {
		t.Errorf("the edge noticed %v stalls for 2 blackouts", stalls)
	}
}

// A 12 s blackout with returns in flight: the minions' own retries fire (closing the
// REQ socket after 5–10 s and sending a re-encrypted copy on a new one, up to 3 sends,
// as Salt does). The master still sees every return exactly once, and none that a
// direct link would have delivered is lost.
func TestBlackoutWithMinionRetries(t *testing.T) {
	ctx := ctxFor(t, 3*time.Minute)
	l := startWith(t, labOpts{minions: 20, profile: wan.Profile{Delay: 10 * time.Millisecond}, timeoutMin: 5 * time.Second, timeoutMax: 10 * time.Second, tries: 3})
	l.warm(t, ctx)
	l.proxy.SetDown(true)
	type result struct {
		res harness.RequestResult
		err error
	}
	done := make(chan result, 1)
	go func() { // two returns per minion, sent into the blackout
		r, err := l.minions.Request(ctx, harness.RequestOpts{Count: 2, Size: 500, ReplySize: 99})
		done <- result{r, err}
	}()
	time.Sleep(12 * time.Second)
	l.proxy.SetDown(false)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	ms, err := l.master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ms.UniqueRIDs != int64(r.res.Total) || ms.DupRIDs != 0 {
		t.Errorf("returns at the master: want %d unique, 0 duplicated; got %d unique, %d duplicated", r.res.Total, ms.UniqueRIDs, ms.DupRIDs)
	}
	if r.res.WrongReply != 0 {
		t.Errorf("a minion got a reply that was not for its current try: %+v", r.res)
	}
	retries, _ := l.pair.Edge.Metric("salt_broker_edge_minion_retries_total")
	t.Logf("minions: %+v; edge recognised %v retries; master: %d unique, %d duplicated", r.res, retries, ms.UniqueRIDs, ms.DupRIDs)
	if r.res.Retried > 0 && retries == 0 {
		t.Error("the minions retried but the edge recognised none")
	}
}

// 5 % loss each way with 40–60 ms one-way delay: the same guarantees.
func TestLossyLink(t *testing.T) {
	ctx := ctxFor(t, 3*time.Minute)
	l := start(t, 20, wan.Profile{Delay: 40 * time.Millisecond, Jitter: 20 * time.Millisecond, Loss: 0.05})
	l.warm(t, ctx)
	const pubs = 40
	if _, err := l.master.Publish(ctx, harness.PublishOpts{Count: pubs, Rate: 4, Size: 463}); err != nil {
		t.Fatal(err)
	}
	l.assertExactlyOnce(t, ctx, pubs)
}

// kill -9 of the edge with --state-dir, then a restart: publications published
// while it was down are replayed once the minions re-subscribed.
func TestEdgeKill9WithStateDirReplays(t *testing.T) {
	ctx := ctxFor(t, 3*time.Minute)
	l := start(t, 10, wan.Profile{}, "--state-dir", t.TempDir())
	l.warm(t, ctx)
	const pubs = 40
	tag, err := l.master.PublishAsync(harness.PublishOpts{Count: pubs, Rate: 5, Size: 463})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond)
	_ = l.pair.Edge.Signal(syscall.SIGKILL)
	time.Sleep(time.Second)
	l.pair.StartEdge(t)
	if _, err := l.master.WaitPublished(ctx, tag); err != nil {
		t.Fatal(err)
	}
	st := l.settle(t, ctx, pubs)
	// Returns in flight at the kill die with the edge; minions re-send after their
	// own timeout (60 s here), so only publications are asserted: none missing, in
	// order, at most the last 200 ms of the cursor re-published (Salt ignores a jid it has seen).
	if st.Pubs < int64(st.Minions)*pubs || st.Missing != 0 || st.OutOfOrder != 0 {
		t.Errorf("after edge kill -9: %+v", st)
	}
	if st.Dup > int64(st.Minions)*2 {
		t.Errorf("%d publications re-published, more than the cursor's 200 ms save interval allows", st.Dup)
	}
	if !strings.Contains(l.pair.Edge.Stderr(), "replaying publications after restart") {
		t.Error("the restarted edge did not hold its replay for the minions")
	}
}

// kill -9 of the core, then a restart: what the master published while no core was
// subscribed is gone (Salt semantics); everything after reaches every minion, and
// the edge carries on without a restart of its own.
func TestCoreKill9(t *testing.T) {
	ctx := ctxFor(t, 3*time.Minute)
	l := start(t, 10, wan.Profile{})
	l.warm(t, ctx)
	_ = l.pair.Core.Signal(syscall.SIGKILL)
	time.Sleep(time.Second)
	l.pair.StartCore(t)
	if err := l.pair.Edge.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	// Wait for the new core's SUB to be subscribed at the master, as the warm-up does.
	if err := harness.WarmUp(ctx, l.master, l.minions); err != nil {
		t.Fatal(err)
	}
	_ = l.minions.ResetStats(ctx)
	_ = l.master.ResetStats(ctx)
	const pubs = 20
	if _, err := l.master.Publish(ctx, harness.PublishOpts{Count: pubs, Rate: 10, Size: 463}); err != nil {
		t.Fatal(err)
	}
	l.assertExactlyOnce(t, ctx, pubs)
	if n, _ := l.pair.Edge.Metric("salt_broker_edge_tunnel_reconnects_total"); n < 1 {
		t.Errorf("edge reconnects %v", n)
	}
	t.Logf("edge log: %s", lastLine(l.pair.Edge.Stderr(), "connected to the core"))
}

func lastLine(s, substr string) string {
	lines := strings.Split(s, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], substr) {
			return lines[i]
		}
	}
	return ""
}
