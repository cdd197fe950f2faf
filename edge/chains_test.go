package edge

import (
	"fmt"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/internal/saltmsg"
)

// chainRig drives a chainIndex alone, on a virtual clock, the way the request table
// does: a try arrives (earlierTry, then link, then note), its socket closes, it is
// answered. The rules are tested here as docs/guarantees.md states them; what the
// table does with the answer is tested in retry_test.go.
type chainRig struct {
	t      *testing.T
	clk    *testClock
	c      *chainIndex
	nextID uint64
	seen   map[string]bool // sockets that have sent: the router's part
}

func newChainRig(t *testing.T) *chainRig {
	clk := &testClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return &chainRig{t: t, clk: clk, seen: map[string]bool{}, c: newChainIndex(clk.now, chainLimits{window: time.Second, maxChain: 3, maxPending: 100})}
}

// arrive is minion's request of loadLen bytes on socket, now: what it retries, if
// anything, is linked.
func (g *chainRig) arrive(socket, minion string, loadLen int) (*try, match) {
	g.t.Helper()
	g.nextID++
	first := !g.seen[socket]
	g.seen[socket] = true
	r := newTry(g.nextID, []byte(socket), first, saltmsg.Envelope{Class: saltmsg.ClassAES, Enc: "aes", ID: minion, LoadLen: loadLen}, g.clk.now())
	if r == nil {
		g.t.Fatal("a return was not chainable")
	}
	m := g.c.earlierTry(r)
	if m.earlier != nil {
		g.c.link(m.earlier, r)
	}
	g.c.note(r)
	return r, m
}

// close is r's socket closing with r unanswered; it returns the retry that came first, if any.
func (g *chainRig) close(r *try) *try {
	g.c.socketGone(r.socket, func(*try, *try) {})
	r.peerGone = true
	return g.c.orphan(r)
}

func (g *chainRig) wantEarlier(m match, want *try, what string) {
	g.t.Helper()
	if m.earlier != want {
		g.t.Errorf("%s: retries %v, want %v", what, idOf(m.earlier), idOf(want))
	}
}

func idOf(r *try) any {
	if r == nil {
		return "none"
	}
	return r.id
}

// Rule 1: the earlier request's socket closed unanswered, and the new one comes from
// a new socket within the window of that close; not past it, not of another shape.
func TestChainRuleSocketClosedUnanswered(t *testing.T) {
	g := newChainRig(t)
	a, _ := g.arrive("s1", "m1", 500)
	g.clk.advance(5 * time.Second)
	if n := g.close(a); n != nil {
		t.Fatalf("the close found a retry %d that never came", n.id)
	}
	g.clk.advance(900 * time.Millisecond)
	_, m := g.arrive("s2", "m1", 501)
	g.wantEarlier(m, nil, "another load length")
	_, m = g.arrive("s3", "m2", 500)
	g.wantEarlier(m, nil, "another minion")
	b, m := g.arrive("s4", "m1", 500)
	g.wantEarlier(m, a, "same shape within the window of the close")
	if b.chain != 1 || b.gap != 5900*time.Millisecond {
		t.Errorf("the retry's chain %d, gap %s; want 1, 5.9s", b.chain, b.gap)
	}

	late := newChainRig(t)
	a, _ = late.arrive("s1", "m1", 500)
	late.close(a)
	late.clk.advance(1100 * time.Millisecond)
	_, m = late.arrive("s2", "m1", 500)
	late.wantEarlier(m, nil, "same shape past the window")
}

// Rule 1, the other order: the retry's new socket beat the old one's close. The
// close finds it, unless it was sent already.
func TestChainRuleRetryBeforeTheClose(t *testing.T) {
	for _, sent := range []bool{false, true} {
		g := newChainRig(t)
		a, _ := g.arrive("s1", "m1", 500)
		g.clk.advance(time.Millisecond)
		b, m := g.arrive("s2", "m1", 500)
		g.wantEarlier(m, nil, "a millisecond after, its socket open") // rule 2 needs minRetryAge
		b.sent = sent
		g.clk.advance(500 * time.Millisecond)
		n := g.close(a)
		if want := map[bool]*try{false: b, true: nil}[sent]; n != want {
			t.Errorf("retry sent %v: the close found %v, want %v", sent, idOf(n), idOf(want))
		}
	}

	// A request older than the one whose socket closed is not its retry.
	g := newChainRig(t)
	older, _ := g.arrive("s1", "m1", 500)
	g.clk.advance(time.Millisecond)
	a, _ := g.arrive("s2", "m1", 500)
	g.clk.advance(500 * time.Millisecond)
	if n := g.close(a); n != nil {
		t.Errorf("the close of %d found %v, an older request, for its retry", a.id, idOf(n))
	}
	_ = older
}

// Rule 2: the first request of a new socket, while the earlier one waits on another
// socket not seen closing and is at least minRetryAge old.
func TestChainRuleNewSocketWithoutAClose(t *testing.T) {
	g := newChainRig(t)
	g.arrive("s1", "m1", 500)
	g.clk.advance(minRetryAge - time.Millisecond)
	_, m := g.arrive("s2", "m1", 500)
	g.wantEarlier(m, nil, "younger than minRetryAge")

	g = newChainRig(t)
	g.arrive("s1", "m1", 500)
	g.clk.advance(7 * time.Second)
	a2, m := g.arrive("s1", "m1", 500)
	g.wantEarlier(m, nil, "on the same socket")
	g.clk.advance(7 * time.Second)
	_, m = g.arrive("s2", "m1", 500)
	g.wantEarlier(m, a2, "first request of a new socket, 7 s after the shape's newest")
	g.clk.advance(7 * time.Second)
	d, m := g.arrive("s2", "m1", 500)
	g.wantEarlier(m, nil, "a socket that has sent before")

	// A socket that sent a request of another shape first is no new socket.
	g2 := newChainRig(t)
	g2.arrive("s1", "m1", 500)
	g2.clk.advance(7 * time.Second)
	g2.arrive("s2", "m1", 300)
	_, m = g2.arrive("s2", "m1", 500)
	g2.wantEarlier(m, nil, "the second request of a socket")

	// Its socket seen closing, the earlier try is rule 1's, within the window only.
	g.close(d)
	g.clk.advance(7 * time.Second)
	_, m = g.arrive("s3", "m1", 500)
	g.wantEarlier(m, nil, "long after the earlier one's socket closed")
}

// Rule 3: a request of a new socket just after an answer is the answered try's next
// one only when it comes one retry timer (±retryTimerSlack) after it; otherwise it
// is passed on, counted when an outage held the answer up.
func TestChainRuleTryRacingItsReply(t *testing.T) {
	for _, c := range []struct {
		name   string
		gap    time.Duration
		outage bool
		want   afterReply
	}{
		{"one timer later", 7 * time.Second, false, droppedAfterReply},
		{"within the slack", 7*time.Second + 900*time.Millisecond, false, droppedAfterReply},
		{"past the slack", 7*time.Second + 1100*time.Millisecond, true, passedAfterReply},
		{"another gap", 4 * time.Second, false, notAfterReply},
		{"another gap after an outage", 4 * time.Second, true, passedAfterReply},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := newChainRig(t)
			a, _ := g.arrive("s1", "m1", 500)
			g.clk.advance(7 * time.Second)
			b, m := g.arrive("s2", "m1", 500) // a was held, never sent: b is its retry
			g.wantEarlier(m, a, "the second try")
			g.c.removed(a) // replaced
			if c.outage {
				g.c.connected(g.clk.now().Add(time.Second))
			}
			g.clk.advance(c.gap - 20*time.Millisecond)
			g.c.removed(b)
			g.c.finished(b, true, g.clk.now())
			g.clk.advance(20 * time.Millisecond)
			_, m = g.arrive("s3", "m1", 500)
			if m.after != c.want {
				t.Errorf("decided %q, want %q", m.after, c.want)
			}
			if want := map[afterReply]*try{droppedAfterReply: b}[c.want]; m.earlier != want {
				t.Errorf("retries %v, want %v", idOf(m.earlier), idOf(want))
			}
		})
	}

	// A connection that came up after the answer did not hold it up.
	g := newChainRig(t)
	g.arrive("s1", "m1", 500)
	g.clk.advance(7 * time.Second)
	b, _ := g.arrive("s2", "m1", 500)
	g.clk.advance(4 * time.Second)
	g.c.removed(b)
	g.c.finished(b, true, g.clk.now())
	g.c.connected(g.clk.now().Add(time.Millisecond))
	g.clk.advance(20 * time.Millisecond)
	if _, m := g.arrive("s3", "m1", 500); m.after != notAfterReply || m.earlier != nil {
		t.Errorf("outage after the answer: decided %q, retries %v; want neither", m.after, idOf(m.earlier))
	}

	// A first try's timer is unknown: a request after its answer is a request of its own.
	g = newChainRig(t)
	a, _ := g.arrive("s1", "m1", 435)
	g.clk.advance(2 * time.Second)
	g.c.removed(a)
	g.c.finished(a, true, g.clk.now())
	g.c.socketGone("s1", func(*try, *try) { t.Error("an answered try was orphaned") })
	g.clk.advance(10 * time.Millisecond)
	_, m := g.arrive("s2", "m1", 435)
	g.wantEarlier(m, nil, "the next request of a job process")
}

// At most maxChain tries form one chain; the next is a request of its own.
func TestChainIsCapped(t *testing.T) {
	g := newChainRig(t)
	prev, _ := g.arrive("s0", "m1", 500)
	for i := 1; i <= 3; i++ {
		g.clk.advance(6 * time.Second)
		g.close(prev)
		g.clk.advance(10 * time.Millisecond)
		next, m := g.arrive(fmt.Sprintf("s%d", i), "m1", 500)
		if linked := m.earlier != nil; linked != (i < 3) {
			t.Errorf("try %d: linked %v, want %v", i+1, linked, i < 3)
		}
		prev = next
	}
}

// --retry-window 0 turns recognition off; auth requests and requests without a
// clear minion id are never chained.
func TestChainRecognitionOff(t *testing.T) {
	g := newChainRig(t)
	g.c.limits.window = 0
	a, _ := g.arrive("s1", "m1", 500)
	g.close(a)
	_, m := g.arrive("s2", "m1", 500)
	g.wantEarlier(m, nil, "window 0")
	for _, env := range []saltmsg.Envelope{
		{Class: saltmsg.ClassAuth, Enc: "clear", ID: "m1"},
		{Class: saltmsg.ClassAES, Enc: "aes", LoadLen: 500},
		{Class: saltmsg.ClassAES, Enc: "aes", ID: "m1"},
	} {
		if r := newTry(1, []byte("s"), true, env, time.Time{}); r != nil {
			t.Errorf("%+v is chained", env)
		}
	}
}

// A try dropped because the master has its chain is kept, so the chain's next try
// is dropped too; kept at most settledKeep, and never once the chain is complete.
func TestSettledTryIsKeptForItsChain(t *testing.T) {
	g := newChainRig(t)
	a, _ := g.arrive("s1", "m1", 500)
	g.clk.advance(6 * time.Second)
	g.close(a)
	b, m := g.arrive("s2", "m1", 500)
	g.wantEarlier(m, a, "the second try")
	g.c.removed(a)
	g.c.removed(b)
	g.c.settle(b, g.clk.now()) // the core said the master has a
	if g.c.settled[b.id] != b || !b.member() {
		t.Fatal("the settled try is not kept for its chain")
	}
	g.clk.advance(6 * time.Second)
	var linked [][2]*try
	g.c.socketGone("s2", func(e, r *try) { linked = append(linked, [2]*try{e, r}) })
	c, m := g.arrive("s3", "m1", 500)
	g.wantEarlier(m, b, "the third try")
	if len(linked) != 0 || c.chain != 2 || b.member() || g.c.settled[b.id] != nil {
		t.Error("the master has the chain: the third try joins it, and the settled one is forgotten")
	}
	g.c.removed(c)
	g.c.settle(c, g.clk.now())
	if len(g.c.settled) != 0 {
		t.Errorf("the chain is complete, yet %d settled tries are kept", len(g.c.settled))
	}

	// Past 1024 settled tries, those older than settledKeep are let go.
	g.c.limits.maxPending = 20_000
	for i := range 1025 {
		r := newTry(uint64(1000+i), fmt.Appendf(nil, "x%d", i), true, saltmsg.Envelope{Class: saltmsg.ClassAES, Enc: "aes", ID: "m", LoadLen: i + 1}, g.clk.now())
		g.c.settle(r, g.clk.now())
		if i == 0 {
			g.clk.advance(settledKeep + time.Second)
		}
	}
	if n := len(g.c.settled); n != 1024 {
		t.Errorf("%d settled tries kept, want the 1024 younger than settledKeep", n)
	}
}
