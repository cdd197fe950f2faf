package edge

import (
	"io"
	"log/slog"
	"testing"
	"time"

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

// ret is a minion's return as the edge sees it: same shape on every try.
func ret(identity string, minion string, loadLen int) *edgeReq {
	return &edgeReq{identity: []byte(identity), created: time.Now(),
		env: saltmsg.Envelope{Class: saltmsg.ClassAES, Enc: "aes", ID: minion, LoadLen: loadLen}}
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
	tb.e.cfg.RetryWindow = 50 * time.Millisecond
	a := ret("s1", "m1", 500)
	tb.add(a)
	tb.peerGone([]byte("s1"))
	tb.add(ret("s2", "m1", 501)) // another length
	tb.add(ret("s3", "m2", 500)) // another minion
	time.Sleep(60 * time.Millisecond)
	tb.add(ret("s4", "m1", 500)) // too late
	if got := tb.takeWaiting(time.Now()); len(got) != 4 {
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
	a := ret("s1", "m1", 500)
	tb.add(a)
	tb.takeWaiting(time.Now())
	tb.requeue(a)
	time.Sleep(time.Millisecond)
	b := ret("s2", "m1", 500)
	tb.add(b) // a's socket is not seen closed yet
	tb.peerGone([]byte("s1"))
	if b.replaces != a {
		t.Fatal("the retry that came first was not linked to its earlier try")
	}
	if got := tb.takeWaiting(time.Now()); len(got) != 0 {
		t.Fatalf("nothing may be sent before the core answers, got %v", ids(got))
	}
	tb.resolveRetry(tb.takeCancels()[0], wire.CancelDone)
	if got := tb.takeWaiting(time.Now()); len(got) != 1 || got[0] != b {
		t.Fatalf("want the retry, got %v", ids(got))
	}
}
