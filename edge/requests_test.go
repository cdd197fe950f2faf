package edge

import (
	"fmt"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/salt-broker/salt-broker/internal/saltmsg"
)

func auth(identity, minion string) *edgeReq {
	return &edgeReq{identity: []byte(identity), created: time.Now(),
		env: saltmsg.Envelope{Class: saltmsg.ClassAuth, Enc: "clear", ID: minion}}
}

func dropped(tb *reqTable, cause string) float64 {
	var m dto.Metric
	if err := tb.e.metrics.dropped.WithLabelValues(cause).Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// A full table refuses, it never grows (docs/guarantees.md, Requests).
func TestFullTableRefuses(t *testing.T) {
	tb := testTable(t)
	tb.e.cfg.MaxPending = 2
	if !tb.add(ret("s1", "m1", 500)) || !tb.add(ret("s2", "m2", 500)) {
		t.Fatal("the table refused below its bound")
	}
	if tb.add(ret("s3", "m3", 500)) {
		t.Fatal("the table took a request past --max-pending")
	}
	if tb.size() != 2 {
		t.Fatalf("table holds %d, bound 2", tb.size())
	}
	sent := tb.takeWaiting(time.Now())
	tb.finish(sent[0], true)
	if !tb.add(ret("s3", "m3", 500)) {
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
	tb.e.cfg.AuthMaxAge = 30 * time.Second
	tb.e.cfg.RequestMaxAge = 15 * time.Minute
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
	tb.e.cfg.MaxPending = 1
	a := ret("s1", "m1", 500)
	tb.add(a)
	tb.takeWaiting(time.Now())
	tb.requeue(a) // it may have reached the core; the link died
	tb.peerGone([]byte("s1"))
	if tb.add(ret("s9", "m9", 500)) {
		t.Fatal("a new request got into a full table")
	}
	b := ret("s2", "m1", 500)
	if !tb.add(b) || b.replaces != a {
		t.Fatal("the retry was refused by the full table instead of joining its chain")
	}
}

// Answered requests are kept one retry window (a try racing its reply may follow),
// then let go: the shape index does not grow with the traffic.
func TestAnsweredRequestsAreLetGo(t *testing.T) {
	tb := testTable(t)
	tb.e.cfg.RetryWindow = 50 * time.Millisecond
	for i := range 3 {
		r := ret(fmt.Sprintf("s%d", i), fmt.Sprintf("m%d", i), 500)
		tb.add(r)
		tb.takeWaiting(time.Now())
		tb.finish(r, true)
	}
	if len(tb.lastOfShape) != 3 || len(tb.answered) != 3 {
		t.Fatalf("want the 3 answers kept for the window, got %d shapes, %d answers", len(tb.lastOfShape), len(tb.answered))
	}
	time.Sleep(60 * time.Millisecond)
	last := ret("s9", "m9", 500)
	tb.add(last)
	tb.takeWaiting(time.Now())
	tb.finish(last, true)
	if len(tb.lastOfShape) != 1 || len(tb.answered) != 1 || tb.answered[0] != last {
		t.Errorf("after the window: %d shapes, %d answers kept, want only the newest", len(tb.lastOfShape), len(tb.answered))
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
