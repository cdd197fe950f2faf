package edge

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"weak"

	dto "github.com/prometheus/client_model/go"

	"github.com/salt-broker/salt-broker/internal/saltmsg"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/internal/zmtp"
)

func auth(identity, minion string) *edgeReq {
	return &edgeReq{identity: []byte(identity), created: time.Now(),
		env: saltmsg.Envelope{Class: saltmsg.ClassAuth, Enc: "clear", ID: minion}}
}

func dropped(tb *reqTable, cause string) float64 {
	var m dto.Metric
	if err := hostOf(tb).metrics.dropped.WithLabelValues(cause).Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// A full table refuses, it never grows (docs/guarantees.md, Requests).
func TestFullTableRefuses(t *testing.T) {
	tb := testTable(t)
	hostOf(tb).cfg.MaxPending = 2
	if tb.add(ret("s1", "m1", 500)) != accepted || tb.add(ret("s2", "m2", 500)) != accepted {
		t.Fatal("the table refused below its bound")
	}
	if got := tb.add(ret("s3", "m3", 500)); got != tableFull {
		t.Fatalf("the table took a request past --max-pending: %q", got)
	}
	if tb.size() != 2 {
		t.Fatalf("table holds %d, bound 2", tb.size())
	}
	sent := tb.takeWaiting(time.Now())
	tb.finish(sent[0], true)
	if tb.add(ret("s3", "m3", 500)) != accepted {
		t.Fatal("a freed slot was not reused")
	}
	for _, r := range append(sent[1:], tb.takeWaiting(time.Now())...) {
		tb.finish(r, true)
	}
	if tb.size() != 0 || len(tb.bySocket) != 0 {
		t.Errorf("an empty table (%d) still indexes %d sockets", tb.size(), len(tb.bySocket))
	}
}

// No dam (DESIGN §3.4): an auth request whose socket closed before it was sent, one
// older than --auth-max-age, and any request older than --request-max-age are
// dropped unsent and counted; an auth request already on its way is kept.
func TestClassPolicyDropsWhatNobodyWaitsFor(t *testing.T) {
	tb := testTable(t)
	hostOf(tb).cfg.AuthMaxAge = 30 * time.Second
	hostOf(tb).cfg.RequestMaxAge = 15 * time.Minute
	now := time.Now()

	gone := auth("a1", "m1")
	tb.add(gone)
	tb.peerGone([]byte("a1"))

	old := auth("a2", "m2")
	old.created = now.Add(-31 * time.Second)
	tb.add(old)

	expired := ret("r1", "m3", 500)
	expired.created = now.Add(-16 * time.Minute)
	tb.add(expired)

	fresh := auth("a3", "m4")
	tb.add(fresh)
	ret1 := ret("r2", "m5", 500)
	tb.add(ret1)

	got := tb.takeWaiting(now)
	if len(got) != 2 || got[0] != fresh || got[1] != ret1 {
		t.Fatalf("want only the fresh auth and the fresh return sent, got %v", ids(got))
	}
	if n := dropped(tb, "stale_auth"); n != 2 {
		t.Errorf("stale_auth drops: %v, want 2", n)
	}
	if n := dropped(tb, "expired"); n != 1 {
		t.Errorf("expired drops: %v, want 1", n)
	}

	// An auth request already sent when its socket closes stays until the core
	// answers: it may be at the master, and a request leaves the table only once.
	tb.peerGone([]byte("a3"))
	if tb.size() != 2 {
		t.Errorf("table holds %d, want the two sent requests", tb.size())
	}
}

// A minion's retry of a request the table holds joins its chain even when the table
// is full: refused, its earlier try would reach the master after the outage and the
// minion's next try a second time.
func TestRetryJoinsItsChainInAFullTable(t *testing.T) {
	tb := testTable(t)
	hostOf(tb).cfg.MaxPending = 1
	a := ret("s1", "m1", 500)
	tb.add(a)
	tb.takeWaiting(time.Now())
	tb.requeue(a) // it may have reached the core; the link died
	tb.peerGone([]byte("s1"))
	if tb.add(ret("s9", "m9", 500)) == accepted {
		t.Fatal("a new request got into a full table")
	}
	b := ret("s2", "m1", 500)
	if tb.add(b) != accepted || b.replaces != a {
		t.Fatal("the retry was refused by the full table instead of joining its chain")
	}
}

// Answered requests are kept one retry window (a try racing its reply may follow),
// then let go: the shape index does not grow with the traffic.
func TestAnsweredRequestsAreLetGo(t *testing.T) {
	tb := testTable(t)
	clk := virtualClock(tb)
	tb.chains.limits.window = 50 * time.Millisecond
	for i := range 3 {
		r := clk.ret(fmt.Sprintf("s%d", i), fmt.Sprintf("m%d", i), 500)
		tb.add(r)
		tb.takeWaiting(clk.now())
		tb.finish(r, true)
	}
	ch := tb.chains
	if len(ch.lastOfShape) != 3 || len(ch.answered) != 3 {
		t.Fatalf("want the 3 answers kept for the window, got %d shapes, %d answers", len(ch.lastOfShape), len(ch.answered))
	}
	clk.advance(60 * time.Millisecond)
	last := clk.ret("s9", "m9", 500)
	tb.add(last)
	tb.takeWaiting(clk.now())
	tb.finish(last, true)
	if len(ch.lastOfShape) != 1 || len(ch.answered) != 1 || ch.answered[0] != last.try {
		t.Errorf("after the window: %d shapes, %d answers kept, want only the newest", len(ch.lastOfShape), len(ch.answered))
	}
}

// Draining sends nothing more, and waits only for what was sent before.
func TestDrainSendsNothingMore(t *testing.T) {
	tb := testTable(t)
	tb.add(ret("s1", "m1", 500))
	sent := tb.takeWaiting(time.Now())
	tb.add(ret("s2", "m2", 500))
	tb.startDrain()
	if got := tb.takeWaiting(time.Now()); len(got) != 0 {
		t.Fatalf("a draining edge sent %v", ids(got))
	}
	if n := tb.sentUnanswered(); n != 1 {
		t.Fatalf("want the 1 sent request waited for, got %d", n)
	}
	tb.finish(sent[0], true)
	if n := tb.sentUnanswered(); n != 0 {
		t.Fatalf("answered, still %d waited for", n)
	}
}

// lockCheck is a log handler that records each line, and whether reqTable.mu was
// held when it was written: a slow log sink must not hold the table.
type lockCheck struct {
	tb    *reqTable
	mu    sync.Mutex
	lines []string
	held  []string
}

func (h *lockCheck) Enabled(context.Context, slog.Level) bool { return true }
func (h *lockCheck) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *lockCheck) WithGroup(string) slog.Handler            { return h }
func (h *lockCheck) Handle(_ context.Context, r slog.Record) error {
	free := h.tb.mu.TryLock()
	if free {
		h.tb.mu.Unlock()
	}
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lines = append(h.lines, b.String())
	if !free {
		h.held = append(h.held, r.Message)
	}
	return nil
}

func (h *lockCheck) logged(substr string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, l := range h.lines {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

func checkLogs(t *testing.T, tb *reqTable) *lockCheck {
	h := &lockCheck{tb: tb}
	hostOf(tb).log = slog.New(h)
	t.Cleanup(func() {
		if len(h.held) > 0 {
			t.Errorf("logged while holding reqTable.mu: %q", h.held)
		}
	})
	return h
}

// The class policy runs whether or not a connection is up: through an outage, a
// stale auth request and an over-age one are dropped, counted and their slots and
// bytes freed, without any takeWaiting; the rest keep their place in the queue.
func TestClassPolicyRunsWithoutAConnection(t *testing.T) {
	tb := testTable(t)
	logs := checkLogs(t, tb)
	now := time.Now()
	stale := auth("a1", "m1")
	stale.created = now.Add(-31 * time.Second)
	tb.add(stale)
	fresh := auth("a2", "m2")
	tb.add(fresh)
	expired := ret("r1", "m3", 500)
	expired.created = now.Add(-16 * time.Minute)
	expired.body = [][]byte{make([]byte, 1000)}
	tb.add(expired)
	kept := ret("r2", "m4", 500)
	kept.body = [][]byte{make([]byte, 700)}
	tb.add(kept)
	// A retry held for its chain is not the policy's to judge until it is released
	// (takeWaiting leaves it alone too).
	held := ret("r3", "m5", 500)
	held.created = now.Add(-16 * time.Minute)
	tb.add(held)
	held.replaces = kept

	tb.expire(now)
	if tb.size() != 3 || tb.byID[stale.id] != nil || tb.byID[expired.id] != nil {
		t.Fatalf("table holds %d, want the fresh auth, the fresh return and the held retry", tb.size())
	}
	if n := dropped(tb, "stale_auth"); n != 1 {
		t.Errorf("stale_auth drops: %v, want 1", n)
	}
	if n := dropped(tb, "expired"); n != 1 {
		t.Errorf("expired drops: %v, want 1", n)
	}
	if want := reqSize(fresh) + reqSize(kept) + reqSize(held); tb.pendingBytes() != want {
		t.Errorf("pending bytes %d after the drops, want %d", tb.pendingBytes(), want)
	}
	if logs.logged("request dropped unsent: older than --request-max-age minion=m3") != 1 {
		t.Errorf("the over-age drop was not logged: %q", logs.lines)
	}
	tb.expire(now) // nothing more to drop; the order is kept
	if got := tb.takeWaiting(now); len(got) != 2 || got[0] != fresh || got[1] != kept {
		t.Fatalf("want the fresh auth then the fresh return sent, got %v", ids(got))
	}
}

// expireLoop is the timer Edge.Run starts: it drops a stale request with no
// connection and no other request to set it off, and stops with its context. In a
// synctest bubble its ticker runs on virtual time: one tick costs no real time.
func TestExpireLoopDropsWhileDisconnected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tb := testTable(t)
		stale := auth("a1", "m1")
		stale.created = time.Now().Add(-31 * time.Second)
		tb.add(stale)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { defer close(done); tb.expireLoop(ctx, expireEvery) }()
		time.Sleep(expireEvery) // the bubble's clock moves one tick, at once
		synctest.Wait()         // and expireLoop has handled it
		if tb.size() != 0 {
			t.Error("the stale auth request was not dropped by the first tick")
		}
		cancel()
		<-done
		if n := dropped(tb, "stale_auth"); n != 1 {
			t.Errorf("stale_auth drops: %v, want 1", n)
		}
	})
}

// retBody is a minion return carrying a body of n bytes.
func retBody(identity, minion string, n int) *edgeReq {
	r := ret(identity, minion, 500)
	r.body = [][]byte{make([]byte, n)}
	return r
}

// Past --max-pending-bytes new requests are refused and counted (one warning a
// second naming the flag) while the count bound is far; finished and dropped
// requests give their bytes back; a request alone always fits; a minion's retry
// still joins its chain past the bound.
func TestByteBoundRefusesAndReleases(t *testing.T) {
	tb := testTable(t)
	logs := checkLogs(t, tb)
	hostOf(tb).cfg.MaxPendingBytes = 3000
	accept := func(identity string, n int) {
		hostOf(tb).accept(zmtp.Message{Identity: []byte(identity), Frames: [][]byte{{}, make([]byte, n)}})
	}
	accept("s1", 1000)
	accept("s2", 1000)
	if tb.size() != 2 || tb.pendingBytes() != 2*(2+1000) {
		t.Fatalf("under the bound: %d requests, %d bytes", tb.size(), tb.pendingBytes())
	}
	for i := range 5 {
		accept(fmt.Sprintf("x%d", i), 1000)
	}
	if tb.size() != 2 || dropped(tb, "table_bytes") != 5 || dropped(tb, "table_full") != 0 {
		t.Fatalf("past the bound: %d requests held, %v refused by bytes, %v by count", tb.size(), dropped(tb, "table_bytes"), dropped(tb, "table_full"))
	}
	if n := logs.logged("--max-pending-bytes"); n != 1 {
		t.Errorf("%d warnings naming --max-pending-bytes for 5 refusals in a second, want 1: %q", n, logs.lines)
	}

	sent := tb.takeWaiting(time.Now())
	tb.finish(sent[0], true)
	tb.finish(sent[1], false)
	if tb.pendingBytes() != 0 {
		t.Fatalf("finished requests still hold %d bytes", tb.pendingBytes())
	}
	accept("s3", 5000) // over the bound, into an empty table
	if tb.size() != 1 {
		t.Fatal("a request larger than the bound was refused by an empty table")
	}
	for _, r := range tb.takeWaiting(time.Now()) {
		tb.finish(r, true)
	}

	// A retry of a held request joins its chain past the bound.
	a := retBody("r1", "m1", 2500)
	if tb.add(a) != accepted {
		t.Fatal("refused below the bound")
	}
	tb.takeWaiting(time.Now())
	tb.requeue(a) // it may have reached the core; the link died
	tb.peerGone([]byte("r1"))
	if got := tb.add(retBody("r9", "m9", 1000)); got != tableBytes {
		t.Fatalf("a new request past the byte bound: %q, want %q", got, tableBytes)
	}
	b := retBody("r2", "m1", 2500)
	if tb.add(b) != accepted || b.replaces != a {
		t.Fatal("the retry was refused by the byte bound instead of joining its chain")
	}
	tb.resolveRetry(tb.takeCancels()[0], wire.CancelAtMaster)
	if tb.size() != 0 || tb.pendingBytes() != 0 {
		t.Errorf("after the chain settled: %d requests, %d bytes held", tb.size(), tb.pendingBytes())
	}
}

// A finished request's body is let go at once: recent (the retry rules' window)
// keeps only its ID and time, and what the rules keep of an answered request for
// one RetryWindow (its shape, for a try racing the reply) holds no body.
func TestFinishedRequestsLetGoOfTheirBodies(t *testing.T) {
	for _, answered := range []bool{false, true} {
		tb := testTable(t)
		tb.chains.limits.window = time.Hour // nothing ages out during the test
		var body weak.Pointer[[1 << 20]byte]
		var k chainKey
		func() {
			arr := new([1 << 20]byte)
			body = weak.Make(arr)
			r := ret("s1", "m1", 500)
			r.body = [][]byte{arr[:]}
			k, _ = shapeOf(r.env)
			tb.add(r)
			tb.takeWaiting(time.Now())
			tb.finish(r, answered)
		}()
		if len(tb.chains.recent[k]) != 1 {
			t.Fatalf("answered %v: recent holds %d entries of the shape, want 1", answered, len(tb.chains.recent[k]))
		}
		// The chain index holds tries, which point at no request: only the weak
		// pointer below can tell whether the body is let go.
		if o := tb.chains.lastOfShape[k]; answered && o == nil {
			t.Fatal("answered: the shape index lost the answered try")
		}
		runtime.GC()
		if body.Value() != nil {
			t.Errorf("answered %v: the finished request's body is still referenced", answered)
		}
		runtime.KeepAlive(tb) // the table lives on: what it holds must not hold the body
	}
}

// Every line the table logs is written after reqTable.mu is released, with what it
// said before: takeWaiting's over-age drop, a closing socket, a recognised retry,
// a possible retry of an answered request passed on.
func TestNoLogLineUnderTheTableLock(t *testing.T) {
	tb := testTable(t)
	logs := checkLogs(t, tb)
	now := time.Now()
	old := ret("s0", "m0", 300)
	old.created = now.Add(-16 * time.Minute)
	tb.add(old)
	tb.takeWaiting(now)

	a := ret("s1", "m1", 500)
	a.created = now.Add(-14 * time.Second)
	tb.add(a)
	tb.peerGone([]byte("s1"))
	b := ret("s2", "m1", 500) // a's retry, 7 s later
	b.created = now.Add(-7 * time.Second)
	tb.add(b)
	tb.connected(b.created.Add(time.Second)) // an outage held the answer up
	if got := tb.takeWaiting(now); len(got) != 1 || !tb.finish(got[0], true) {
		t.Fatalf("want the retry sent and answered, got %v", ids(got))
	}
	next := ret("s3", "m1", 500) // another gap: passed on, counted
	next.created = b.created.Add(4 * time.Second)
	b.try.answeredAt = next.created.Add(-20 * time.Millisecond)
	tb.add(next)

	for _, want := range []string{
		"request dropped unsent: older than --request-max-age minion=m0 class=aes age=16m0s",
		"minion socket closed with a request unanswered id=2 minion=m1 socket=7331",
		"minion retry recognised minion=m1 id=3 earlier_id=2 try=2 earlier_sent=false master_has_it=false",
		"minion request may retry a return answered just before; passed on, the master may see it twice minion=m1 earlier_id=3",
	} {
		if logs.logged(want) != 1 {
			t.Errorf("not logged once: %q; logs: %q", want, logs.lines)
		}
	}
}
