package edge

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/salt-broker/salt-broker/internal/saltmsg"
	"github.com/salt-broker/salt-broker/internal/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testTable(t *testing.T) *reqTable {
	t.Helper()
	cfg := Config{CoreAddr: "x", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	cfg.Defaults()
	e := &Edge{cfg: cfg, log: cfg.Logger}
	e.metrics = newMetrics(e, nil)
	e.reqs = newReqTable(e)
	return e.reqs
}

// hostOf is the edge testTable made tb for: its settings, counters and log.
func hostOf(tb *reqTable) *Edge { return tb.host.(*Edge) }

// ret is a minion's return as the edge sees it: same shape on every try.
func ret(identity string, minion string, loadLen int) *edgeReq {
	return &edgeReq{identity: []byte(identity), first: true, created: time.Now(),
		env: saltmsg.Envelope{Class: saltmsg.ClassAES, Enc: "aes", ID: minion, LoadLen: loadLen}}
}

// testClock is a virtual clock for a table and its chain index: it moves only when
// a test advances it, so a test of the window sleeps for nothing.
type testClock struct{ t time.Time }

func (c *testClock) now() time.Time          { return c.t }
func (c *testClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// ret is a minion's return arriving now, by this clock.
func (c *testClock) ret(identity, minion string, loadLen int) *edgeReq {
	r := ret(identity, minion, loadLen)
	r.created = c.t
	return r
}

// virtualClock gives tb (and its chain index) a virtual clock.
func virtualClock(tb *reqTable) *testClock {
	c := &testClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	tb.now = c.now
	tb.chains.now = c.now
	return c
}

func ids(rs []*edgeReq) []uint64 {
	var out []uint64
	for _, r := range rs {
		out = append(out, r.id)
	}
	return out
}

func TestRetryReplacesAnUnsentTry(t *testing.T) {
	tb := testTable(t)
	a := ret("sock1", "m1", 500)
	tb.add(a)
	tb.peerGone([]byte("sock1"))
	b := ret("sock2", "m1", 500)
	tb.add(b)
	got := tb.takeWaiting(time.Now())
	if len(got) != 1 || got[0] != b {
		t.Fatalf("want only the retry on the wire, got %v", ids(got))
	}
	if tb.size() != 1 {
		t.Fatalf("table holds %d", tb.size())
	}
}

func TestRetryOfASentTryWaitsForTheCore(t *testing.T) {
	for _, res := range []byte{wire.CancelDone, wire.CancelAtMaster} {
		tb := testTable(t)
		a := ret("sock1", "m1", 500)
		tb.add(a)
		tb.takeWaiting(time.Now()) // a goes on a stream: it may reach the core
		tb.requeue(a)              // ... and the link dies
		tb.peerGone([]byte("sock1"))
		b := ret("sock2", "m1", 500)
		tb.add(b)
		if got := tb.takeWaiting(time.Now()); len(got) != 0 {
			t.Fatalf("nothing may be sent before the core answers, got %v", ids(got))
		}
		cancels := tb.takeCancels()
		if len(cancels) != 1 || cancels[0] != b || b.replaces != a {
			t.Fatal("the retry must wait for its earlier try's withdrawal")
		}
		tb.resolveRetry(b, res)
		got := tb.takeWaiting(time.Now())
		switch res {
		case wire.CancelDone:
			if len(got) != 1 || got[0] != b || tb.size() != 1 {
				t.Errorf("withdrawn: want the retry sent instead, got %v (table %d)", ids(got), tb.size())
			}
		case wire.CancelAtMaster:
			if len(got) != 0 || tb.size() != 0 {
				t.Errorf("at the master: want the retry dropped, got %v (table %d)", ids(got), tb.size())
			}
		}
	}
}

func TestThirdTryTakesOverTheWait(t *testing.T) {
	tb := testTable(t)
	a := ret("s1", "m1", 500)
	tb.add(a)
	tb.takeWaiting(time.Now())
	tb.requeue(a)
	tb.peerGone([]byte("s1"))
	b := ret("s2", "m1", 500)
	tb.add(b)
	inFlight := tb.takeCancels() // b's cancel is on its way
	tb.peerGone([]byte("s2"))
	c := ret("s3", "m1", 500)
	tb.add(c)
	if c.replaces != a || b.successor != c {
		t.Fatal("the third try must take over the wait for the first")
	}
	tb.resolveRetry(inFlight[0], wire.CancelAtMaster)
	if got := tb.takeWaiting(time.Now()); len(got) != 0 || tb.size() != 0 {
		t.Fatalf("the master has the first try: nothing more may be sent, got %v (table %d)", ids(got), tb.size())
	}
}

func TestNotARetry(t *testing.T) {
	tb := testTable(t)
	clk := virtualClock(tb)
	tb.chains.limits.window = 50 * time.Millisecond
	tb.add(clk.ret("s1", "m1", 500))
	tb.peerGone([]byte("s1"))
	tb.add(clk.ret("s2", "m1", 501)) // another length
	tb.add(clk.ret("s3", "m2", 500)) // another minion
	clk.advance(60 * time.Millisecond)
	tb.add(clk.ret("s4", "m1", 500)) // too late
	if got := tb.takeWaiting(clk.now()); len(got) != 4 {
		t.Fatalf("want 4 independent requests, got %v", ids(got))
	}
}

func TestChainLengthIsCapped(t *testing.T) {
	tb := testTable(t)
	prev := ret("s0", "m1", 500)
	tb.add(prev)
	for i := 1; i <= 3; i++ {
		tb.peerGone(prev.identity)
		next := ret("s"+string(rune('0'+i)), "m1", 500)
		tb.add(next)
		prev = next
	}
	// Tries 0, 1, 2 form one chain (return_retry_tries = 3); the fourth is new.
	if got := tb.takeWaiting(time.Now()); len(got) != 2 {
		t.Fatalf("want the chain's last try and one new request, got %v", ids(got))
	}
}

// The retry's new connection can beat the old one's close: the chain still forms.
func TestRetryArrivingBeforeTheCloseIsSeen(t *testing.T) {
	tb := testTable(t)
	clk := virtualClock(tb)
	a := clk.ret("s1", "m1", 500)
	tb.add(a)
	tb.takeWaiting(clk.now())
	tb.requeue(a)
	clk.advance(time.Millisecond)
	b := clk.ret("s2", "m1", 500)
	tb.add(b) // a's socket is not seen closed yet
	tb.peerGone([]byte("s1"))
	if b.replaces != a {
		t.Fatal("the retry that came first was not linked to its earlier try")
	}
	if got := tb.takeWaiting(clk.now()); len(got) != 0 {
		t.Fatalf("nothing may be sent before the core answers, got %v", ids(got))
	}
	tb.resolveRetry(tb.takeCancels()[0], wire.CancelDone)
	if got := tb.takeWaiting(clk.now()); len(got) != 1 || got[0] != b {
		t.Fatalf("want the retry, got %v", ids(got))
	}
}

// The master has the chain, the edge drops the second try — and the minion, which
// got no reply, sends a third after its timeout. That try must be dropped too: a
// bench run in the packet lab (15 s blackout, returns in flight) showed the master
// such third tries as duplicates before the dropped try was kept for its chain.
func TestTryAfterARetryDroppedAtTheMasterIsDroppedToo(t *testing.T) {
	for _, order := range []string{"close first", "retry first"} {
		tb := testTable(t)
		a := ret("s1", "m1", 500)
		tb.add(a)
		tb.takeWaiting(time.Now())
		tb.requeue(a) // it may have reached the core; the link died
		tb.peerGone([]byte("s1"))
		b := ret("s2", "m1", 500)
		tb.add(b)
		tb.resolveRetry(tb.takeCancels()[0], wire.CancelAtMaster)
		if got := tb.takeWaiting(time.Now()); len(got) != 0 || tb.size() != 0 {
			t.Fatalf("%s: the second try must be dropped, got %v (table %d)", order, ids(got), tb.size())
		}
		c := ret("s3", "m1", 500)
		if order == "close first" {
			tb.peerGone([]byte("s2"))
			tb.add(c)
		} else {
			tb.add(c)
			tb.peerGone([]byte("s2"))
		}
		if got := tb.takeWaiting(time.Now()); len(got) != 0 || tb.size() != 0 {
			t.Errorf("%s: the third try reached the wire, got %v (table %d)", order, ids(got), tb.size())
		}
		// The chain is complete (3 tries): a fourth request of that shape is new.
		tb.peerGone([]byte("s3"))
		d := ret("s4", "m1", 500)
		tb.add(d)
		if got := tb.takeWaiting(time.Now()); len(got) != 1 || got[0] != d {
			t.Errorf("%s: after a complete chain, want the next request sent, got %v", order, ids(got))
		}
		if n := len(tb.chains.settled); n != 0 {
			t.Errorf("%s: %d settled tries kept after the chain completed", order, n)
		}
	}
}

// A Salt 3007 minion sends its retry as the first request of a new socket, and the
// old socket's close may come much later (observed with a real minion). The retry
// is recognised at once, and the chain stays one copy at the master through all
// three tries — with no close at all.
func TestRetryOnANewSocketWithoutAClose(t *testing.T) {
	tb := testTable(t)
	a := ret("s1", "m1", 500)
	a.created = time.Now().Add(-7 * time.Second)
	tb.add(a)
	tb.takeWaiting(time.Now())
	tb.requeue(a) // it may have reached the core; the link died
	b := ret("s2", "m1", 500)
	tb.add(b)
	if b.replaces != a {
		t.Fatal("the first request of a new socket, same shape, 7 s after an unanswered one, was not taken for its retry")
	}
	if got := tb.takeWaiting(time.Now()); len(got) != 0 {
		t.Fatalf("nothing may be sent before the core answers, got %v", ids(got))
	}
	tb.resolveRetry(tb.takeCancels()[0], wire.CancelAtMaster)
	b.try.created = time.Now().Add(-7 * time.Second)
	c := ret("s3", "m1", 500)
	tb.add(c)
	if got := tb.takeWaiting(time.Now()); len(got) != 0 || tb.size() != 0 {
		t.Fatalf("the third try must be dropped too, got %v (table %d)", ids(got), tb.size())
	}
}

// A same-shape request soon after another, or on a socket that has sent before, is
// a request of its own.
func TestSameShapeSoonAfterOrOnAnOldSocketIsNotARetry(t *testing.T) {
	tb := testTable(t)
	a := ret("s1", "m1", 500)
	tb.add(a)
	tb.takeWaiting(time.Now())
	b := ret("s2", "m1", 500) // a new socket, but 0 s after a
	tb.add(b)
	old := ret("s3", "m1", 500)
	tb.add(old)
	tb.takeWaiting(time.Now())
	d := ret("s3", "m1", 500) // s3 has sent before
	d.first = false
	d.created = time.Now().Add(10 * time.Second)
	tb.add(d)
	if got := tb.takeWaiting(time.Now()); len(got) != 1 || got[0] != d || b.try.chain != 0 || d.try.chain != 0 {
		t.Fatalf("want independent requests, got %v (chains %d, %d)", ids(got), b.try.chain, d.try.chain)
	}
}

// Salt's job processes close a channel once it is answered and open a new one for
// the next request, often of the same length (cp.get_file against a real master):
// that next request is not a retry, whatever the order of close and request.
func TestNewChannelAfterAnAnswerIsNotARetry(t *testing.T) {
	for _, closeFirst := range []bool{true, false} {
		tb := testTable(t)
		a := ret("s1", "m1", 435)
		a.created = time.Now().Add(-2 * time.Second) // a slow answer
		tb.add(a)
		tb.takeWaiting(time.Now())
		if !tb.finish(a, true) {
			t.Fatal("the reply was not delivered")
		}
		if closeFirst {
			tb.peerGone([]byte("s1"))
		}
		b := ret("s2", "m1", 435)
		tb.add(b)
		if !closeFirst {
			tb.peerGone([]byte("s1"))
		}
		if got := tb.takeWaiting(time.Now()); len(got) != 1 || got[0] != b || b.try.chain != 0 {
			t.Errorf("close first %v: want the new request sent as it is, got %v (chain %d)", closeFirst, ids(got), b.try.chain)
		}
	}
}

// A minion that got its reply keeps its socket and sends its next return on it:
// nothing is held or dropped.
func TestNextReturnOnTheSameSocketGoesAtOnce(t *testing.T) {
	tb := testTable(t)
	a := ret("s1", "m1", 500)
	tb.add(a)
	tb.takeWaiting(time.Now())
	tb.finish(a, true)
	b := ret("s1", "m1", 500)
	b.first = false
	tb.add(b)
	if got := tb.takeWaiting(time.Now()); len(got) != 1 || got[0] != b {
		t.Fatalf("want the next return sent at once, got %v", ids(got))
	}
}

// A minion whose reply arrives just as its retry timer fires sends its next try
// anyway, on a new socket. One timer after its previous try, that try belongs to a
// chain the master has: it is dropped. At another moment it is a request of its own.
func TestTryRacingItsReplyIsDropped(t *testing.T) {
	for _, c := range []struct {
		name    string
		gap     time.Duration // from the answered try to the next request
		outage  bool          // the answer was held up by an outage
		dropped bool
		passed  float64 // counted as a possible retry passed on
	}{
		{"one timer later", 7 * time.Second, false, true, 0},
		{"within the slack", 7*time.Second + 300*time.Millisecond, true, true, 0},
		{"another gap", 4 * time.Second, false, false, 0},
		{"another gap after an outage", 4 * time.Second, true, false, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			tb := testTable(t)
			now := time.Now()
			a := ret("s1", "m1", 500)
			a.created = now.Add(-14 * time.Second)
			tb.add(a)
			b := ret("s2", "m1", 500) // its retry, 7 s later: a was held, never sent
			b.created = now.Add(-7 * time.Second)
			tb.add(b)
			if b.try.chain != 1 || b.try.gap != 7*time.Second {
				t.Fatalf("the second try was not recognised: chain %d, gap %s", b.try.chain, b.try.gap)
			}
			if c.outage {
				tb.connected(b.created.Add(time.Second))
			}
			if got := tb.takeWaiting(now); len(got) != 1 || got[0] != b || !tb.finish(b, true) {
				t.Fatalf("want the second try sent and answered, got %v", ids(got))
			}
			next := ret("s3", "m1", 500)
			next.created = b.created.Add(c.gap)
			b.try.answeredAt = next.created.Add(-20 * time.Millisecond)
			tb.add(next)
			got := tb.takeWaiting(now)
			if dropped := len(got) == 0 && tb.size() == 0; dropped != c.dropped {
				t.Errorf("dropped %v, want %v (sent %v, table %d)", dropped, c.dropped, ids(got), tb.size())
			}
			if n := testutil.ToFloat64(hostOf(tb).metrics.retriesAfterReply.WithLabelValues("passed")); n != c.passed {
				t.Errorf("passed-on possible retries counted %v, want %v", n, c.passed)
			}
		})
	}
}
