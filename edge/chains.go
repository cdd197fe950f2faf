package edge

import (
	"time"

	"github.com/salt-broker/salt-broker/internal/saltmsg"
)

// A Salt minion whose return gets no reply in 5–10 s closes its REQ socket and at
// once sends the return again on a new one, re-encrypted: new bytes, same length, up
// to return_retry_tries (3) sends. The chain index recognises such a retry from what
// it keeps of each request — its envelope shape, its socket and its times, never its
// bytes — and says which earlier try it retries. The request table (requests.go,
// retry.go) keeps the requests and acts on the answer: replace the earlier try, ask
// the core to withdraw it, or drop the retry. docs/guarantees.md ("A minion's own
// retries") states the rules this file implements, in the same order.

// chainKey is the envelope shape a minion's retry shares with its earlier try: the
// same enc, the same clear minion id, the same load length.
type chainKey struct {
	enc, minion string
	loadLen     int
}

// shapeOf is env's chain key; false for what is never chained (auth requests, and
// requests without a clear minion id or load).
func shapeOf(env saltmsg.Envelope) (chainKey, bool) {
	if env.Class != saltmsg.ClassAES || env.ID == "" || env.LoadLen == 0 {
		return chainKey{}, false
	}
	return chainKey{enc: env.Enc, minion: env.ID, loadLen: env.LoadLen}, true
}

// tryState is where a try stands for the chain rules.
type tryState int

const (
	tryPending tryState = iota // its request is in the table
	trySettled                 // dropped because the master has its chain; kept for the chain's next try
	tryDone                    // out of the table: answered, refused, replaced or forgotten
)

// try is what the chain index knows of one chainable request. It points at nothing
// of the request: a finished request's body is let go at once, however long the
// index remembers its try.
type try struct {
	id      uint64
	socket  string // the minion socket's routing id
	first   bool   // the first request of its socket (zmtp.Message.First)
	key     chainKey
	created time.Time

	state    tryState
	sent     bool // put on a stream at least once: it may have reached the core
	peerGone bool // its minion socket closed

	chain      int           // tries of the minion's chain before this one
	gap        time.Duration // since the chain's previous try: the minion's retry timer, as seen here
	goneAt     time.Time     // when its socket closed with it unanswered
	settledAt  time.Time     // when it became trySettled
	answeredAt time.Time     // when its reply was handed to its minion
}

// member: a later try of this one's chain still has it to join — it is pending, or
// settled because the master has the chain.
func (o *try) member() bool { return o.state != tryDone }

// masterHasIt: the master has this try's chain (it was answered, or settled).
func (o *try) masterHasIt() bool { return !o.settledAt.IsZero() || !o.answeredAt.IsZero() }

// chainLimits are the edge's settings the rules read.
type chainLimits struct {
	window     time.Duration // --retry-window; <= 0 turns recognition off
	maxChain   int           // --retry-chain: tries in one chain
	maxPending int           // --max-pending: bounds each index
}

// afterReply is what the rule for a try racing its reply decided, for the
// retries_after_reply counter.
type afterReply string

// match is what earlierTry found for a new try.
type match struct {
	earlier  *try       // the try it retries; nil: none, it is a request of its own
	after    afterReply // what rule 3 decided, if it applied
	answered *try       // the answered try rule 3 judged against
}

const (
	notAfterReply     afterReply = ""
	droppedAfterReply afterReply = "dropped" // one retry timer after an answered retry: its chain's next try
	passedAfterReply  afterReply = "passed"  // soon after an answer an outage held up: may be a retry, passed on
)

// chainIndex recognises minion retry chains. It has no lock of its own: the
// request table calls it holding reqTable.mu. Every time it reads comes from now or
// from the tries themselves, so tests drive it with a virtual clock.
type chainIndex struct {
	now    func() time.Time
	limits chainLimits

	orphans     map[chainKey][]*try // unanswered tries whose socket closed, oldest first
	recent      map[chainKey][]*try // tries that came in the last window, oldest first
	lastOfShape map[chainKey]*try   // each minion's newest try of each shape
	settled     map[uint64]*try     // trySettled tries, by request ID
	answered    []*try              // tries answered in the last window, oldest first
	upSince     time.Time           // when the current connection to the core came up
}

func newChainIndex(now func() time.Time, l chainLimits) *chainIndex {
	return &chainIndex{now: now, limits: l,
		orphans: make(map[chainKey][]*try), recent: make(map[chainKey][]*try), lastOfShape: make(map[chainKey]*try),
		settled: make(map[uint64]*try)}
}

// newTry is the record of a request, or nil if it is never chained; first says
// whether it is its socket's first request.
func newTry(id uint64, socket []byte, first bool, env saltmsg.Envelope, created time.Time) *try {
	k, ok := shapeOf(env)
	if !ok {
		return nil
	}
	return &try{id: id, socket: string(socket), first: first, key: k, created: created}
}

// earlierTry finds the try r retries, if it is one (an orphan found is taken off
// the orphans; the caller links the two), and says what the rule for a try racing
// its reply decided. The rules, as docs/guarantees.md states them, for a request of the
// same shape as an earlier unanswered one of the same minion:
//
//  1. the earlier one's socket closed unanswered, and r comes within the window of
//     that close (orphan covers r arriving first);
//  2. r is the first request of a new socket, and the earlier one is still
//     unanswered on another socket not seen closing, and at least minRetryAge old.
//     A Salt 3007 minion sends its retry on a new socket, and the old socket's close
//     may reach the edge much later (seen with a real minion: not before the old
//     request was answered);
//  3. r is the first request of a new socket, just after the earlier one was
//     answered, one retry timer after it (racedItsReply).
//
// At most maxChain tries form one chain.
func (c *chainIndex) earlierTry(r *try) match {
	if r == nil || c.limits.window <= 0 {
		return match{}
	}
	if o := c.takeOrphan(r); o != nil {
		return match{earlier: o} // rule 1
	}
	if !r.first {
		return match{} // its socket has sent before: the router says (zmtp.Message.First)
	}
	o := c.lastOfShape[r.key]
	if o == nil || o.socket == r.socket || !c.roomAfter(o) || r.created.Sub(o.created) < minRetryAge {
		return match{}
	}
	if !o.answeredAt.IsZero() {
		return c.racedItsReply(o, r) // rule 3
	}
	if o.peerGone || !o.member() {
		return match{}
	}
	return match{earlier: o} // rule 2
}

// minRetryAge: a minion retries only after its return_retry_timer (5 s by default;
// Salt's other channels wait 60 s), so a same-shape request sooner than this is a
// request of its own.
const minRetryAge = time.Second

// roomAfter: o's chain may have one more try.
func (c *chainIndex) roomAfter(o *try) bool { return o.chain+1 < c.limits.maxChain }

// takeOrphan is rule 1: the newest orphan of r's shape whose socket closed within
// the window before r came, taken off the orphans.
func (c *chainIndex) takeOrphan(r *try) *try {
	list := c.orphans[r.key]
	for i := len(list) - 1; i >= 0; i-- {
		o := list[i]
		if o.member() && r.created.Sub(o.goneAt) <= c.limits.window && c.roomAfter(o) {
			if list = append(list[:i], list[i+1:]...); len(list) == 0 {
				delete(c.orphans, r.key)
			} else {
				c.orphans[r.key] = list
			}
			return o
		}
	}
	return nil
}

// racedItsReply is rule 3: o was answered a moment before r, a first request of a
// new socket with o's shape, came. When o's reply reaches its minion just as the
// minion's retry timer fires, the minion sends its next try anyway: the reply is
// lost to it, and the master already has the chain. Salt draws return_retry_timer
// once per return and waits it out before every try, so a try that comes one timer
// after o — the gap o itself came after its previous try — is o's next try, and it
// is dropped like any try of a chain the master has. A first try's timer is not
// known (it has no previous try), and Salt's job processes send same-shape requests
// on new sockets right after an answer (cp.get_file), so a request that only comes
// soon after an answer is passed on; it is counted when the answer was held up by
// an outage, when a retry of it is likely.
func (c *chainIndex) racedItsReply(o, r *try) match {
	if r.created.Sub(o.answeredAt) > c.limits.window {
		return match{}
	}
	if gap := r.created.Sub(o.created); o.chain > 0 && (gap-o.gap).Abs() <= retryTimerSlack {
		return match{earlier: o, after: droppedAfterReply, answered: o}
	}
	if o.created.Before(c.upSince) && c.upSince.Before(o.answeredAt) {
		return match{after: passedAfterReply, answered: o}
	}
	return match{}
}

// retryTimerSlack is how far a minion's tries may drift from its retry timer, as
// seen at the edge: its event loop's lateness and its new socket's connect (a real
// Salt 3007 minion's third try came 0.1–0.3 s sooner after its second than the
// second after its first).
const retryTimerSlack = time.Second

// orphan remembers o, unanswered, whose socket just closed. The minion's retry may
// already be here — its new connection raced the old one's close — and is returned
// then, if it has not been sent yet (the caller links the two).
func (c *chainIndex) orphan(o *try) *try {
	if o == nil {
		return nil
	}
	o.goneAt = c.now()
	if c.roomAfter(o) {
		for _, n := range c.recent[o.key] {
			if n != o && c.cameBeforeTheClose(n, o) {
				return n
			}
		}
	}
	c.orphans[o.key] = append(c.orphans[o.key], o)
	if len(c.orphans) > 4*c.limits.maxPending/3+64 {
		c.pruneOrphans(o.goneAt)
	}
	return nil
}

// cameBeforeTheClose: n, a newer request of o's shape that came within the window
// before o's socket closed, is still pending, unsent, on a socket not seen closing,
// and no try of a chain yet — rule 1 with the retry first.
func (c *chainIndex) cameBeforeTheClose(n, o *try) bool {
	fresh := n.state == tryPending && !n.sent && n.chain == 0 && !n.peerGone
	return fresh && n.created.After(o.created) && o.goneAt.Sub(n.created) <= c.limits.window
}

func (c *chainIndex) pruneOrphans(now time.Time) {
	for k, list := range c.orphans {
		kept := list[:0]
		for _, o := range list {
			if now.Sub(o.goneAt) <= c.limits.window && o.member() {
				kept = append(kept, o)
			}
		}
		if len(kept) == 0 {
			delete(c.orphans, k)
		} else {
			c.orphans[k] = kept
		}
	}
}

// link makes r the next try of prev's chain, and says whether the master has the
// chain already (r is then to be settled in turn; prev is forgotten).
func (c *chainIndex) link(prev, r *try) (masterHasIt bool) {
	r.chain = prev.chain + 1
	r.gap = r.created.Sub(prev.created)
	if prev.masterHasIt() {
		c.forgetSettled(prev)
		return true
	}
	return false
}

// note indexes r for the retries that may follow it: r is its minion's newest
// request of its shape.
func (c *chainIndex) note(r *try) {
	if r == nil || c.limits.window <= 0 {
		return
	}
	c.lastOfShape[r.key] = r
	if len(c.lastOfShape) > c.limits.maxPending+64 {
		for k, n := range c.lastOfShape {
			if !n.member() {
				delete(c.lastOfShape, k)
			}
		}
	}
	c.noteRecent(r)
}

// noteRecent keeps new tries for one window, so a retry that arrives before its
// minion's old socket is seen closing is still recognised (orphan).
func (c *chainIndex) noteRecent(r *try) {
	list := c.recent[r.key]
	kept := list[:0]
	for _, n := range list {
		if r.created.Sub(n.created) <= c.limits.window {
			kept = append(kept, n)
		}
	}
	clear(list[len(kept):]) // no stale pointers past the end
	c.recent[r.key] = append(kept, r)
	if len(c.recent) > c.limits.maxPending+64 {
		for k, l := range c.recent {
			if len(l) == 0 || r.created.Sub(l[len(l)-1].created) > c.limits.window {
				delete(c.recent, k)
			}
		}
	}
}

// removed: r's request left the table.
func (c *chainIndex) removed(r *try) {
	if r != nil {
		r.state = tryDone
	}
}

// settle keeps r, whose request was dropped because the master has its chain, so
// the chain's next try is dropped too — unless the chain is complete.
func (c *chainIndex) settle(r *try, now time.Time) {
	if r == nil || r.chain+1 >= c.limits.maxChain {
		return
	}
	r.state = trySettled
	r.settledAt = now
	c.settled[r.id] = r
	if len(c.settled) > 1024 {
		c.pruneSettled(now)
	}
}

// settledKeep bounds how long a settled try waits for its minion's next one: Salt's
// return_retry_timer_max is 10 s by default, 60 s is generous.
const settledKeep = time.Minute

func (c *chainIndex) pruneSettled(now time.Time) {
	for _, r := range c.settled {
		gone := !r.goneAt.IsZero() && now.Sub(r.goneAt) > c.limits.window
		if gone || now.Sub(r.settledAt) > settledKeep || len(c.settled) > c.limits.maxPending {
			c.forgetSettled(r)
		}
	}
}

func (c *chainIndex) forgetSettled(r *try) {
	if c.settled[r.id] == r {
		delete(c.settled, r.id)
		r.state = tryDone
	}
}

// finished: r's request left the table with its reply (answered) or without. An
// answered try stays its shape's newest for one window: its minion's timer may fire
// as the reply arrives (rule 3).
func (c *chainIndex) finished(r *try, answered bool, now time.Time) {
	c.forgetAnswers(now)
	if r == nil || c.lastOfShape[r.key] != r {
		return
	}
	if answered {
		r.answeredAt = now
		c.answered = append(c.answered, r)
	} else {
		delete(c.lastOfShape, r.key)
	}
}

// forgetAnswers lets go of answered tries older than one window.
func (c *chainIndex) forgetAnswers(now time.Time) {
	n := 0
	for _, r := range c.answered {
		if now.Sub(r.answeredAt) <= c.limits.window {
			break
		}
		if c.lastOfShape[r.key] == r {
			delete(c.lastOfShape, r.key)
		}
		n++
	}
	clear(c.answered[:n])
	c.answered = c.answered[n:]
}

// socketGone: a minion socket closed. Its settled tries are orphaned now, each
// linked (by link, at once: a link changes what the next one finds) to its next try
// if that is here already. The caller orphans the socket's pending tries itself,
// after its class policy. Which sockets are open the router alone keeps.
func (c *chainIndex) socketGone(socket string, link func(earlier, retry *try)) {
	for _, r := range c.settled {
		if r.socket == socket {
			r.peerGone = true
			if n := c.orphan(r); n != nil {
				link(r, n)
			}
		}
	}
}

// connected: a connection to the core came up at now.
func (c *chainIndex) connected(now time.Time) { c.upSince = now }
