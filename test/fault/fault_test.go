// Package fault inflicts real faults on the pair under Salt-like load from real
// libzmq peers: blackouts and loss on the link (through test/wan's UDP proxy), and
// kill -9 of the edge and of the core. It asserts what docs/guarantees.md promises.
package fault

import (
	"cmp"
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
	minions                 int
	profile                 wan.Profile
	timeoutMin, timeoutMax  time.Duration // the minions' return_retry_timer range
	tries                   int           // return_retry_tries
	jobTimeMin, jobTimeMax  time.Duration // a return is sent this long after its job arrived
	lateClose               time.Duration // a timed-out REQ socket closes this long after its retry
	reconnect, reconnectMax time.Duration // the minions' ZeroMQ reconnect interval and its cap (default 100, 500 ms)
	blockUDP                bool          // UDP dropped from the start
	edgeArgs                []string      // after --transport quic, so a --transport here wins
	coreArgs                []string
}

func startWith(t *testing.T, o labOpts) *lab {
	t.Helper()
	l := &lab{master: harness.StartMaster(t, harness.MasterOpts{})}
	l.pair = harness.StartPair(t, harness.PairOpts{
		MasterPubPort: l.master.PubPort, RetPort: l.master.RetPort,
		EdgeArgs: append([]string{"--transport", "quic"}, o.edgeArgs...),
		CoreArgs: o.coreArgs,
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
		JobTimeMin: o.jobTimeMin, JobTimeMax: o.jobTimeMax, LateClose: o.lateClose,
		ReconnectIvl: cmp.Or(o.reconnect, 100*time.Millisecond), ReconnectIvlMax: cmp.Or(o.reconnectMax, 500*time.Millisecond),
	})
	return l
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// settle waits until the minions hold want publications each and every return
// has ended.
func (l *lab) settle(t *testing.T, ctx context.Context, want int64) harness.MinionStats {
	t.Helper()
	st, err := l.minions.Settle(ctx, want, 0)
	if err != nil {
		t.Fatalf("%v: %+v", err, st)
	}
	return st
}

// settleQuiet is settle for runs that lose publications by design: every minion
// holds the last publication (lastSeq, the master's sequence), every return has
// ended and nothing changed for 2 s.
func (l *lab) settleQuiet(t *testing.T, ctx context.Context, lastSeq uint64) harness.MinionStats {
	t.Helper()
	start := time.Now()
	for {
		full, err := l.minions.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		all := len(full.PerMinion) > 0
		for _, m := range full.PerMinion {
			all = all && m.LastSeq >= lastSeq
		}
		if all {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the last publication (seq %d) did not reach every minion", lastSeq)
		case <-time.After(200 * time.Millisecond):
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Logf("the last publication reached every minion %s after the master sent it", d.Round(time.Millisecond))
	}
	st, err := l.minions.Settle(ctx, 0, 2*time.Second)
	if err != nil {
		t.Fatalf("%v: %+v", err, st)
	}
	return st
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

// Three blackouts of 5, 10 and 20 s while 50 minions get jobs at 2/s and answer
// each: after the link returns, every publication reaches every minion in order,
// every return reaches the master exactly once and every reply its minion.
func TestBlackouts(t *testing.T) {
	for _, tr := range []string{"quic", "tcp"} {
		t.Run(tr, func(t *testing.T) {
			t.Parallel()
			testBlackouts(t, tr)
		})
	}
}

func testBlackouts(t *testing.T, transport string) {
	ctx := ctxFor(t, 4*time.Minute)
	l := start(t, 50, wan.Profile{Delay: 10 * time.Millisecond, Jitter: 5 * time.Millisecond}, "--transport", transport)
	l.warm(t, ctx)
	blackouts := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second}
	const pubs = 96 // 48 s at 2/s: 3 s of traffic around each blackout
	tag, err := l.master.PublishAsync(harness.PublishOpts{Count: pubs, Rate: 2, Size: 463, Topics: []string{"broadcast"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range blackouts {
		time.Sleep(3 * time.Second)
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
	if stalls < float64(len(blackouts)) {
		t.Errorf("the edge noticed %v stalls for %d blackouts", stalls, len(blackouts))
	}
}

// A 15 s blackout that starts while returns are in flight: 50 minions get jobs at
// 2/s, each job runs 1–4 s before its return is sent, and the minions retry as Salt
// does (closing the REQ socket after 5–10 s and sending a re-encrypted copy on a new
// one, 3 sends). Some returns reached the master before the link died but their
// replies did not come back; others never left the edge. The master still sees every
// return exactly once, and none is lost that a direct link would have delivered.
//
// Twice: minions that close a timed-out socket at once, and minions that leave it
// open for 20 s, as a real Salt 3007 minion was seen to (docs/interop.md).
func TestBlackoutWithMinionRetries(t *testing.T) {
	for _, c := range []struct {
		name      string
		lateClose time.Duration
	}{{"close-at-once", 0}, {"late-close", 20 * time.Second}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			testBlackoutWithMinionRetries(t, c.lateClose)
		})
	}
}

func testBlackoutWithMinionRetries(t *testing.T, lateClose time.Duration) {
	ctx := ctxFor(t, 3*time.Minute)
	l := startWith(t, labOpts{minions: 50, profile: wan.Profile{Delay: 10 * time.Millisecond, Jitter: 5 * time.Millisecond},
		timeoutMin: 5 * time.Second, timeoutMax: 10 * time.Second, tries: 3, jobTimeMin: time.Second, jobTimeMax: 4 * time.Second,
		lateClose: lateClose})
	l.warm(t, ctx)
	const pubs = 60
	tag, err := l.master.PublishAsync(harness.PublishOpts{Count: pubs, Rate: 2, Size: 463})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(8 * time.Second)
	l.proxy.SetDown(true)
	time.Sleep(15 * time.Second)
	l.proxy.SetDown(false)
	if _, err := l.master.WaitPublished(ctx, tag); err != nil {
		t.Fatal(err)
	}
	st := l.settle(t, ctx, pubs)
	n := int64(st.Minions)
	if st.Pubs != n*pubs || st.Missing != 0 || st.OutOfOrder != 0 || st.Dup != 0 {
		t.Errorf("publications: want %d each, got %+v", pubs, st)
	}
	ms, err := l.master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	retries, _ := l.pair.Edge.Metric("salt_broker_edge_minion_retries_total")
	atMaster, _ := l.pair.Edge.Metric("salt_broker_edge_requests_dropped_total", `cause="retry_at_master"`)
	replaced, _ := l.pair.Edge.Metric("salt_broker_edge_requests_dropped_total", `cause="retry_replaced"`)
	racedDropped, _ := l.pair.Edge.Metric("salt_broker_edge_minion_retries_after_reply_total", `action="dropped"`)
	racedPassed, _ := l.pair.Edge.Metric("salt_broker_edge_minion_retries_after_reply_total", `action="passed"`)
	t.Logf("minions: %d returns, %d ok, %d failed, %d retried; edge: %v retries recognised, %v tries replaced, %v dropped as at the master, "+
		"after a reply %v dropped and %v passed on; master: %d unique, %d duplicated",
		st.Returns, st.ReqOK, st.ReqFailed, st.ReqRetried, retries, replaced, atMaster, racedDropped, racedPassed, ms.UniqueRIDs, ms.DupRIDs)
	// The one duplicate docs/guarantees.md allows: a first try answered as its
	// minion's timer fired, whose retry the edge cannot tell from a new request; it
	// counts each such request it passes on.
	if ms.UniqueRIDs != st.Returns || float64(ms.DupRIDs) > racedPassed {
		t.Errorf("returns at the master: want %d unique, at most %v duplicated; got %d unique, %d duplicated (e.g. %v)",
			st.Returns, racedPassed, ms.UniqueRIDs, ms.DupRIDs, ms.DupExamples)
	}
	if st.WrongReply != 0 {
		t.Errorf("%d minions got a reply that was not for their current try", st.WrongReply)
	}
	if st.ReqRetried > 0 && retries == 0 {
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

// kill -9 of the edge (with --state-dir) and later of the core, each restarted a
// second later, while 50 minions get jobs at 2/s and retry their returns as Salt
// does. What docs/guarantees.md promises, asserted:
//   - edge: nothing missing, in order, at most the cursor's last 200 ms re-published
//     (the restarted edge holds its replay until the minions are back); the returns
//     it held die with it and the minions' own retries re-send them;
//   - core: the publications the master sent while no core was subscribed are gone
//     (the same ones for every minion), everything else arrives in order; the edge
//     re-sends its unanswered returns to the new core, so one that had reached the
//     master before the crash may reach it again;
//   - no return a minion sent is lost.
func TestRestartsMidRun(t *testing.T) {
	ctx := ctxFor(t, 4*time.Minute)
	l := startWith(t, labOpts{minions: 50, timeoutMin: 5 * time.Second, timeoutMax: 10 * time.Second, tries: 3,
		edgeArgs: []string{"--state-dir", t.TempDir()}})
	l.warm(t, ctx)
	const pubs = 80
	tag, err := l.master.PublishAsync(harness.PublishOpts{Count: pubs, Rate: 2, Size: 463})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(8 * time.Second)
	_ = l.pair.Edge.Signal(syscall.SIGKILL)
	time.Sleep(time.Second)
	l.pair.StartEdge(t)

	time.Sleep(12 * time.Second)
	before, err := l.master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = l.pair.Core.Signal(syscall.SIGKILL)
	killed := time.Now()
	time.Sleep(time.Second)
	l.pair.StartCore(t)
	if err := l.pair.Edge.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	subscribed := waitCoreSubscribed(t, ctx, l)
	coreDown := subscribed.Sub(killed)

	published, err := l.master.WaitPublished(ctx, tag)
	if err != nil {
		t.Fatal(err)
	}
	st := l.settleQuiet(t, ctx, published.LastSeq)
	lost := l.assertCoreDowntimeGap(t, ctx, pubs, coreDown)
	if st.OutOfOrder != 0 || st.WrongReply != 0 {
		t.Errorf("out of order %d, wrong replies %d", st.OutOfOrder, st.WrongReply)
	}
	if st.Dup > int64(st.Minions) {
		t.Errorf("%d publications re-published, more than the edge cursor's 200 ms save interval allows", st.Dup)
	}
	if !strings.Contains(l.pair.Edge.Stderr(), "replaying publications after restart") {
		t.Error("the restarted edge did not hold its replay for the minions")
	}
	ms, err := l.master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ms.UniqueRIDs != st.Returns {
		t.Errorf("returns: the minions sent %d, the master has %d: none may be lost", st.Returns, ms.UniqueRIDs)
	}
	// A return can repeat only if it was in flight at a kill: at most one per minion each time.
	if ms.DupRIDs > 2*int64(st.Minions) {
		t.Errorf("%d returns reached the master twice; at most one per minion per kill is allowed", ms.DupRIDs)
	}
	t.Logf("core unsubscribed %s: %d publications missed per minion, %d re-published in all; returns: %d sent, %d ok, %d failed, %d retried; master %d unique, %d duplicated (%d before the core kill)",
		coreDown.Round(time.Millisecond), lost, st.Dup, st.Returns, st.ReqOK, st.ReqFailed, st.ReqRetried, ms.UniqueRIDs, ms.DupRIDs, before.DupRIDs)
}

// An operator's restart of the edge (SIGTERM, as systemctl restart sends) under
// startRestartLab's load. Nothing is lost and nothing repeated: every publication
// reaches every minion in order, because the restarted edge holds its replay until
// as many minions as before are back; every return reaches the master once, because
// the stopping edge sends nothing new and first waits for the replies to what it
// sent. (The edge once saved the minion count after closing their sockets — 0 — and
// so held nothing: a real minion missed the next job.)
func TestGracefulEdgeRestart(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	l, tag := startRestartLab(t, ctx, "--state-dir", t.TempDir())
	const pubs = restartPubs
	stopGracefully(t, ctx, l.pair.Edge)
	time.Sleep(time.Second)
	l.pair.StartEdge(t)
	if _, err := l.master.WaitPublished(ctx, tag); err != nil {
		t.Fatal(err)
	}
	l.assertExactlyOnce(t, ctx, pubs)
	if !strings.Contains(l.pair.Edge.Stderr(), "replaying publications after restart") {
		t.Error("the restarted edge did not hold its replay for the minions")
	}
}

const restartPubs = 30

// startRestartLab runs 20 minions that get jobs at 2/s, answer each 0.2–0.5 s later,
// retry as Salt does and reconnect with a Salt minion's backoff (1 s growing to 4 s;
// Salt's own default grows to 10 s), against a master that takes 300 ms per reply —
// about a dozen returns are in flight at any moment, so a stop always finds some. It
// starts restartPubs jobs and returns 4 s into them.
func startRestartLab(t *testing.T, ctx context.Context, edgeArgs ...string) (*lab, string) {
	t.Helper()
	l := startWith(t, labOpts{minions: 20, timeoutMin: 5 * time.Second, timeoutMax: 10 * time.Second, tries: 3,
		jobTimeMin: 200 * time.Millisecond, jobTimeMax: 500 * time.Millisecond,
		edgeArgs: edgeArgs, reconnect: time.Second, reconnectMax: 4 * time.Second})
	l.warm(t, ctx)
	if err := l.master.SetReplyPolicy(ctx, harness.ReplyPolicy{Delay: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	tag, err := l.master.PublishAsync(harness.PublishOpts{Count: restartPubs, Rate: 2, Size: 463})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second)
	return l, tag
}

// stopGracefully sends b SIGTERM, as systemctl stop does, and waits for a clean exit.
func stopGracefully(t *testing.T, ctx context.Context, b *harness.BrokerProc) {
	t.Helper()
	if err := b.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.Done():
	case <-ctx.Done():
		t.Fatalf("%s did not stop on SIGTERM", b.Name)
	}
	if err := b.ExitErr(); err != nil {
		t.Errorf("%s's exit on SIGTERM: %v", b.Name, err)
	}
}

// assertCoreDowntimeGap checks that every minion missed the same publications, those
// the master sent while no core was subscribed (at 2/s, at most the downtime's worth
// plus one in the master's hands at the stop), and returns how many.
func (l *lab) assertCoreDowntimeGap(t *testing.T, ctx context.Context, pubs int64, coreDown time.Duration) int64 {
	t.Helper()
	full, err := l.minions.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lost := full.PerMinion[0].Missing
	for _, m := range full.PerMinion {
		if m.Missing != lost || m.Pubs-m.Dup != pubs-lost {
			t.Errorf("minion %s: %d received (%d re-published), %d missing; minion %s missed %d",
				m.ID, m.Pubs, m.Dup, m.Missing, full.PerMinion[0].ID, lost)
		}
	}
	if limit := int64(coreDown.Seconds()*2) + 2; lost > limit {
		t.Errorf("%d publications missed per minion; the core was unsubscribed for %s (at most %d)", lost, coreDown.Round(time.Millisecond), limit)
	}
	return lost
}

// An operator's restart of the core (SIGTERM) under startRestartLab's load: every
// return reaches the master exactly once, because the stopping core sends nothing
// new to the master and first waits for its replies to what it has and for the edge
// to confirm them (the next core would not know they had reached the master). The
// publications of the core's downtime are lost, as docs/guarantees.md says — the
// same ones for every minion.
func TestGracefulCoreRestart(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	l, tag := startRestartLab(t, ctx)
	const pubs = restartPubs
	stopped := time.Now()
	stopGracefully(t, ctx, l.pair.Core)
	time.Sleep(time.Second)
	l.pair.StartCore(t)
	coreDown := waitCoreSubscribed(t, ctx, l).Sub(stopped)
	published, err := l.master.WaitPublished(ctx, tag)
	if err != nil {
		t.Fatal(err)
	}
	st := l.settleQuiet(t, ctx, published.LastSeq)
	lost := l.assertCoreDowntimeGap(t, ctx, pubs, coreDown)
	ms, err := l.master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ms.UniqueRIDs != st.Returns || ms.DupRIDs != 0 || st.ReqFailed != 0 {
		t.Errorf("returns: the minions sent %d (%d failed); the master has %d unique, %d duplicated; want all once",
			st.Returns, st.ReqFailed, ms.UniqueRIDs, ms.DupRIDs)
	}
	t.Logf("core down %s: %d publications missed per minion; returns %d sent, %d retried, master %d unique, %d duplicated",
		coreDown.Round(time.Millisecond), lost, st.Returns, st.ReqRetried, ms.UniqueRIDs, ms.DupRIDs)
}

// waitCoreSubscribed waits until a restarted core's SUB is subscribed at the master,
// which is when the master's publications reach it again.
func waitCoreSubscribed(t *testing.T, ctx context.Context, l *lab) time.Time {
	t.Helper()
	for range 600 {
		if n, err := l.pair.Core.Metric("salt_broker_core_master_publications_total"); err == nil && n > 0 {
			return time.Now()
		}
		select {
		case <-ctx.Done():
			t.Fatal("the restarted core received no publication")
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("the restarted core received no publication in 30 s")
	return time.Time{}
}

// An outage longer than the core's replay window (a 20-publication ring here,
// 120 publications during a 3 s blackout): the publications that left the ring
// are a gap the core and the edge log with its range and count; the minions miss
// exactly those, get everything after in order, and nothing is silent.
func TestPublicationGapBeyondReplayWindow(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	l := startWith(t, labOpts{minions: 10, timeoutMin: 60 * time.Second, timeoutMax: 60 * time.Second, tries: 1,
		coreArgs: []string{"--ring-count", "20"}})
	l.warm(t, ctx)
	const pubs = 240
	tag, err := l.master.PublishAsync(harness.PublishOpts{Count: pubs, Rate: 40, Size: 463})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	l.proxy.SetDown(true)
	time.Sleep(3 * time.Second)
	l.proxy.SetDown(false)
	published, err := l.master.WaitPublished(ctx, tag)
	if err != nil {
		t.Fatal(err)
	}
	st := l.settleQuiet(t, ctx, published.LastSeq)
	coreGap, _ := l.pair.Core.Metric("salt_broker_core_publication_gap_total")
	edgeGap, _ := l.pair.Edge.Metric("salt_broker_edge_publication_gap_total")
	n := int64(st.Minions)
	if coreGap < 60 || edgeGap != coreGap {
		t.Fatalf("gap counted by the core %v, by the edge %v: want the same, at least 60", coreGap, edgeGap)
	}
	if st.Missing != n*int64(coreGap) || st.Pubs != n*(pubs-int64(coreGap)) || st.OutOfOrder != 0 || st.Dup != 0 {
		t.Errorf("minions: want %d missing and %d received each, in order; got %+v", int64(coreGap), pubs-int64(coreGap), st)
	}
	for _, want := range []struct{ who, line string }{
		{l.pair.Core.Stderr(), "publications lost: they left the replay ring"},
		{l.pair.Edge.Stderr(), "publications lost in an outage longer than the core's replay window"},
	} {
		got := lastLine(want.who, want.line)
		if !strings.Contains(got, "from_seq=") || !strings.Contains(got, "count=") {
			t.Errorf("no log line %q with the range and count", want.line)
		}
		t.Log(got)
	}
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

// The edge's request table bound hit under a real fault: --max-pending 5, 20 minions
// each send one request into a 5 s blackout and retry every 3 s, 6 tries. Past the
// bound the edge refuses (counted and logged) and the minions' own retries carry the
// requests once the link is back, five at a time: every request is answered, and the
// master sees each once (the retries of the five held ones join their chains).
func TestRequestTableFullDuringBlackout(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	l := startWith(t, labOpts{minions: 20, profile: wan.Profile{Delay: 5 * time.Millisecond},
		timeoutMin: 60 * time.Second, timeoutMax: 60 * time.Second, tries: 1, edgeArgs: []string{"--max-pending", "5"}})
	l.warm(t, ctx)
	l.proxy.SetDown(true)
	type result struct {
		res harness.RequestResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := l.minions.Request(ctx, harness.RequestOpts{Count: 1, Size: 500, ReplySize: 99, Timeout: 3 * time.Second, Tries: 6})
		done <- result{r, err}
	}()
	time.Sleep(5 * time.Second)
	l.proxy.SetDown(false)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	full, _ := l.pair.Edge.Metric("salt_broker_edge_requests_dropped_total", `cause="table_full"`)
	ms, err := l.master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("minions: %+v; edge refused %v for a full table; master %d unique, %d duplicated", r.res, full, ms.UniqueRIDs, ms.DupRIDs)
	if full < 15 {
		t.Errorf("the edge refused %v requests for a full table; 15 of the first 20 did not fit", full)
	}
	if !strings.Contains(l.pair.Edge.Stderr(), "the edge holds --max-pending requests already") {
		t.Error("no log line for the full table")
	}
	if r.res.OK != 20 || r.res.WrongReply != 0 {
		t.Errorf("want all 20 requests answered by their minions' retries, got %+v", r.res)
	}
	if ms.UniqueRIDs != 20 || ms.DupRIDs != 0 {
		t.Errorf("master: want 20 unique, 0 duplicated; got %d, %d (e.g. %v)", ms.UniqueRIDs, ms.DupRIDs, ms.DupExamples)
	}
}
