package core

import (
	"container/list"
	"encoding/binary"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
)

// sessionKey names an edge session. It is bound to the certificate that opened it:
// a session ID is only a name the edge picked (and logs), so another certificate
// holder presenting it must reach none of that edge's requests, replies or cancels.
type sessionKey struct {
	cert    string // common name of the edge's verified certificate
	session uint64 // the EdgeSession of its hello
}

// reqKey names a request across reconnects: the edge assigns IDs within its session.
type reqKey struct {
	sess sessionKey
	id   uint64
}

type reqState int

const (
	stateQueued    reqState = iota // waiting for a slot at the master
	stateAtMaster                  // sent to the master, no reply yet
	stateReplied                   // reply cached until the edge confirms it
	stateDelivered                 // the edge confirmed; only the tombstone is left
	stateRefused                   // will never get a reply (cancelled, timed out, ...)
)

// pending is one request known to the core. Its fields are guarded by the table's mutex;
// done is closed once reply or refusal is set, after the mutex is released.
type pending struct {
	key     reqKey
	ticket  uint64 // routing frame towards the master
	frames  [][]byte
	size    int64 // bytes of frames while queued
	state   reqState
	reply   [][]byte
	refusal wire.Refused
	done    chan struct{}
	created time.Time
	staleAt time.Time     // a request still queued then is refused as stale
	queued  *list.Element // in table.fifo while state == stateQueued
	sentAt  time.Time
}

// TableLimits bound the dedup table.
type TableLimits struct {
	Entries    int           // requests remembered (queued, in flight, cached or tombstoned)
	ReplyBytes int64         // bytes of cached replies
	QueueBytes int64         // bytes of requests waiting for a slot at the master; 0: DefaultQueueBytes
	TTL        time.Duration // how long a request is remembered, so a re-send after an outage is recognised; also the longest a request may wait for the master
}

// DefaultQueueBytes bounds the bytes of requests waiting at the core for a slot at
// the master (the count is bounded by TableLimits.Entries).
const DefaultQueueBytes = 256 << 20

// table is the core's dedup table: each request ID reaches the master at most once,
// and its reply is kept until the edge confirms it, so a re-send after a lost
// connection gets the same reply instead of a second trip to the master.
//
// It also holds the queue towards the master: fifo, under the same mutex, so the
// queue is bounded by the table's own bounds and a request leaves it the moment it
// is cancelled, expires or is refused. No channel operation happens under mu (a
// full or unread channel would stall the table, the sweeper, /status and
// /metrics with it): the sender is woken through kick after the unlock, and done
// channels are closed after the unlock too (see unlock).
type table struct {
	limits TableLimits
	now    func() time.Time
	kick   chan struct{} // capacity 1: "the queue may have something", sent without blocking

	mu          sync.Mutex
	byKey       map[reqKey]*pending
	perCert     map[string]int // entries of byKey by edge certificate (roomLocked)
	byTicket    map[uint64]*pending
	nextTicket  uint64
	replyBytes  int64
	fifo        list.List // of *pending waiting for a slot at the master, oldest first
	queuedBytes int64
	stats       tableStats
	staleUnsaid int // stale refusals not yet returned by sweep

	// Set under mu, acted on by unlock once mu is released.
	toClose []*pending
	toKick  bool
}

// tableStats counts what the table decides that no caller learns from a return
// value, for the core's metrics (requests_queue_full_total, cancels_total,
// reply_evictions_total). What callers do learn (accepted, resent, busy, stale,
// timed out, no master, late replies) they count themselves in requests_total and
// master_late_replies_total, so it is not counted twice here.
type tableStats struct {
	QueueFull      uint64 // busy refusals because the queue towards the master is full in bytes (QueueBytes), not the table
	Cancelled      uint64 // requests the edge cancelled before they reached the master
	ReplyEvictions uint64 // replies dropped from the cache (ReplyBytes) before their edge confirmed them
}

func newTable(l TableLimits) *table {
	if l.QueueBytes == 0 {
		l.QueueBytes = DefaultQueueBytes
	}
	return &table{
		limits:   l,
		now:      time.Now,
		kick:     make(chan struct{}, 1),
		byKey:    make(map[reqKey]*pending),
		perCert:  make(map[string]int),
		byTicket: make(map[uint64]*pending),
	}
}

// fairShareFrom is how full the table must be before an edge certificate holding
// more than its fair share of entries is refused new ones.
const fairShareFrom = 0.75

// roomLocked says whether an edge certificate may add an entry. The table is shared
// by every edge of this core, and any certificate holder may misbehave: one that
// floods it with requests or cancels of made-up IDs must not leave the others
// without room. So the last quarter of the table is kept for certificates under an
// equal share, counting one more certificate than hold entries now (an edge that
// is idle, or about to reconnect, has its share too): past three quarters full, a
// certificate at or over Entries / (certificates + 1) gets no more entries until
// some of its own expire.
func (t *table) roomLocked(cert string) bool {
	n := len(t.byKey)
	if n >= t.limits.Entries {
		return false
	}
	if float64(n) < fairShareFrom*float64(t.limits.Entries) {
		return true
	}
	certs := len(t.perCert)
	if t.perCert[cert] == 0 {
		certs++
	}
	return float64(t.perCert[cert]) < float64(t.limits.Entries)/float64(certs+1)
}

func (t *table) insertLocked(p *pending) {
	t.byKey[p.key] = p
	t.perCert[p.key.sess.cert]++
}

func (t *table) deleteLocked(p *pending) {
	delete(t.byKey, p.key)
	if t.perCert[p.key.sess.cert]--; t.perCert[p.key.sess.cert] <= 0 {
		delete(t.perCert, p.key.sess.cert)
	}
}

// unlock releases mu, then closes the done channels and wakes the sender as the
// locked section decided. Every method that locks mu releases it with unlock.
func (t *table) unlock() {
	closing, kick := t.toClose, t.toKick
	t.toClose, t.toKick = nil, false
	t.mu.Unlock()
	for _, p := range closing {
		close(p.done)
	}
	if kick {
		select {
		case t.kick <- struct{}{}:
		default: // a wake-up is pending already; the sender drains the queue on it
		}
	}
}

// submit registers a request, or finds the one already registered under its key.
// busy reports a full table or queue: the request is refused and the minion's own
// retry covers it. maxAge is how much longer the request is of use (the edge's class
// policy); the core caps it at the table's TTL, and 0 means that cap alone.
func (t *table) submit(key reqKey, frames [][]byte, maxAge time.Duration) (p *pending, duplicate, busy bool) {
	now := t.now()
	t.mu.Lock()
	defer t.unlock()
	if p := t.byKey[key]; p != nil {
		return p, true, false
	}
	if !t.roomLocked(key.sess.cert) {
		return nil, false, true
	}
	size := int64(wire.Size(frames))
	// A request larger than the whole byte bound still passes an empty queue, or it
	// could never be served; the bound is exceeded by that one request at most.
	if t.fifo.Len() > 0 && t.queuedBytes+size > t.limits.QueueBytes {
		t.stats.QueueFull++
		return nil, false, true
	}
	life := t.limits.TTL
	if maxAge > 0 && maxAge < life {
		life = maxAge
	}
	t.nextTicket++
	p = &pending{key: key, ticket: t.nextTicket, frames: frames, size: size, done: make(chan struct{}),
		created: now, staleAt: now.Add(life)}
	t.insertLocked(p)
	t.byTicket[p.ticket] = p
	p.queued = t.fifo.PushBack(p)
	t.queuedBytes += size
	t.toKick = true
	return p, false, false
}

// next takes the oldest queued request for the master and marks it sent, or
// returns nil when nothing is queued. A request past its age budget is refused on
// the way, never sent. The caller holds a slot at the master for the request.
func (t *table) next() (p *pending, frames [][]byte) {
	now := t.now()
	t.mu.Lock()
	defer t.unlock()
	for e := t.fifo.Front(); e != nil; e = t.fifo.Front() {
		p := e.Value.(*pending)
		if now.After(p.staleAt) {
			t.staleLocked(p)
			continue
		}
		t.dequeueLocked(p)
		p.state = stateAtMaster
		p.sentAt = now
		// The master gets it once: it is never sent again, so its bytes are not kept.
		frames, p.frames = p.frames, nil
		return p, frames
	}
	return nil, nil
}

// dequeueLocked takes p out of the queue towards the master, if it is there.
func (t *table) dequeueLocked(p *pending) {
	if p.queued == nil {
		return
	}
	t.fifo.Remove(p.queued)
	p.queued = nil
	t.queuedBytes -= p.size
}

// staleLocked refuses a queued request that has waited longer than its age budget.
func (t *table) staleLocked(p *pending) {
	t.refuseLocked(p, wire.RefusedStale, "waited at the core longer than its edge allowed (its class's max age): the master is slow or unreachable")
	t.staleUnsaid++
}

// complete records the master's reply for a routing ticket. It returns false for a
// reply nobody waits for any more (timed out, or after a core restart).
func (t *table) complete(ticket uint64, reply [][]byte) bool {
	t.mu.Lock()
	defer t.unlock()
	p := t.byTicket[ticket]
	if p == nil || p.state != stateAtMaster {
		return false
	}
	delete(t.byTicket, ticket)
	p.state = stateReplied
	p.reply = reply
	p.frames = nil
	t.replyBytes += int64(wire.Size(reply))
	t.evictRepliesLocked()
	t.toClose = append(t.toClose, p)
	return true
}

// fail ends a request at the master without a reply (the reply was unusable).
func (t *table) fail(ticket uint64, code byte, reason string) bool {
	t.mu.Lock()
	defer t.unlock()
	p := t.byTicket[ticket]
	if p == nil || p.state != stateAtMaster {
		return false
	}
	t.refuseLocked(p, code, reason)
	return true
}

// evictRepliesLocked drops the oldest cached replies beyond the byte bound. An
// edge that re-sends such a request gets a refusal, never a second trip to the master.
func (t *table) evictRepliesLocked() {
	if t.replyBytes <= t.limits.ReplyBytes {
		return
	}
	var oldest []*pending
	for _, p := range t.byKey {
		if p.state == stateReplied {
			oldest = append(oldest, p)
		}
	}
	sortByCreated(oldest)
	for _, p := range oldest {
		if t.replyBytes <= t.limits.ReplyBytes {
			break
		}
		t.replyBytes -= int64(wire.Size(p.reply))
		p.reply = nil
		p.state = stateRefused
		p.refusal = wire.Refused{ID: p.key.id, Code: wire.RefusedBusy, Reason: "reply evicted from the core's cache before the edge confirmed it"}
		t.stats.ReplyEvictions++
	}
}

// delivered records the edge's confirmation: the reply is no longer needed.
func (t *table) delivered(key reqKey) {
	t.mu.Lock()
	defer t.unlock()
	p := t.byKey[key]
	if p == nil || p.state != stateReplied {
		return
	}
	t.replyBytes -= int64(wire.Size(p.reply))
	p.reply = nil
	p.state = stateDelivered
}

// refuseLocked ends a request without a reply. A queued request leaves the queue
// at once, so what the queue holds is only what may still go to the master.
func (t *table) refuseLocked(p *pending, code byte, reason string) {
	t.dequeueLocked(p)
	if p.ticket != 0 {
		delete(t.byTicket, p.ticket)
	}
	p.frames = nil
	p.state = stateRefused
	p.refusal = wire.Refused{ID: p.key.id, Code: code, Reason: reason}
	t.toClose = append(t.toClose, p)
}

// cancel withdraws a request that has not reached the master. An unknown key is
// remembered as cancelled, so a late copy of it can never reach the master either.
func (t *table) cancel(key reqKey) (result byte) {
	t.mu.Lock()
	defer t.unlock()
	p := t.byKey[key]
	switch {
	case p == nil:
		if !t.roomLocked(key.sess.cert) {
			// Cannot remember the tombstone; refusing the cancel is the safe answer
			// (the edge then treats the request as possibly at the master).
			return wire.CancelAtMaster
		}
		p = &pending{key: key, done: make(chan struct{}), created: t.now()}
		t.insertLocked(p)
		t.refuseLocked(p, wire.RefusedCancelled, "cancelled by the edge")
		t.stats.Cancelled++
		return wire.CancelDone
	case p.state == stateQueued:
		t.refuseLocked(p, wire.RefusedCancelled, "cancelled by the edge")
		t.stats.Cancelled++
		return wire.CancelDone
	case p.state == stateRefused && p.refusal.Code == wire.RefusedCancelled:
		return wire.CancelDone
	default:
		return wire.CancelAtMaster
	}
}

// result returns what an edge waiting on p gets.
func (t *table) result(p *pending) (reply [][]byte, refusal *wire.Refused) {
	t.mu.Lock()
	defer t.unlock()
	switch p.state {
	case stateReplied:
		return p.reply, nil
	case stateDelivered:
		return nil, &wire.Refused{ID: p.key.id, Code: wire.RefusedCancelled, Reason: "reply already delivered"}
	default:
		r := p.refusal
		return nil, &r
	}
}

// sweep times out requests the master did not answer, refuses queued requests
// past their age budget, and forgets old entries. It returns how many requests at
// the master timed out, so their slots are freed, and how many queued requests
// were refused as stale since the last sweep (here or by next).
func (t *table) sweep(masterTimeout time.Duration) (timedOut, stale int) {
	now := t.now()
	t.mu.Lock()
	defer t.unlock()
	for _, p := range t.byKey {
		switch {
		case p.state == stateQueued && now.After(p.staleAt):
			t.staleLocked(p)
		case p.state == stateAtMaster && now.Sub(p.sentAt) > masterTimeout:
			t.refuseLocked(p, wire.RefusedTimeout, "the master did not answer in time")
			timedOut++
		case p.state != stateAtMaster && p.state != stateQueued && now.Sub(p.created) > t.limits.TTL:
			if p.state == stateReplied {
				t.replyBytes -= int64(wire.Size(p.reply))
			}
			t.deleteLocked(p)
		}
	}
	stale, t.staleUnsaid = t.staleUnsaid, 0
	return timedOut, stale
}

// refuseUnreached refuses the queued requests that have waited longer than
// masterTimeout, and returns how many. The core calls it while it has never reached
// the master: a request sent to the master gets masterTimeout to be answered, and
// one waiting for a master that was never there (a wrong --master, a master not
// started) gets no longer, instead of its whole class budget (up to --dedup-ttl) of
// silence. Once the master was reached, a queued request waits out its budget
// (a master restart must not cost returns: DESIGN invariant 4).
func (t *table) refuseUnreached(masterTimeout time.Duration) int {
	now := t.now()
	t.mu.Lock()
	defer t.unlock()
	n := 0
	// The queue is oldest first: stop at the first request young enough.
	for e := t.fifo.Front(); e != nil; e = t.fifo.Front() {
		p := e.Value.(*pending)
		if now.Sub(p.created) <= masterTimeout {
			break
		}
		t.refuseLocked(p, wire.RefusedTimeout, "the core has not reached the master since it started: check the core's --master and the master's ret port")
		n++
	}
	return n
}

// shutdown refuses everything still waiting, so no edge stream waits forever.
func (t *table) shutdown() {
	t.mu.Lock()
	defer t.unlock()
	for _, p := range t.byKey {
		if p.state == stateQueued || p.state == stateAtMaster {
			t.refuseLocked(p, wire.RefusedShutdown, "the core is stopping")
		}
	}
}

// unconfirmed counts the requests the master has, or has answered, whose reply the
// edge has not confirmed yet. Once the core is draining, nothing new goes to the
// master, so it only goes down.
func (t *table) unconfirmed() int {
	t.mu.Lock()
	defer t.unlock()
	n := 0
	for _, p := range t.byKey {
		if p.state == stateAtMaster || p.state == stateReplied {
			n++
		}
	}
	return n
}

// queue returns how many requests wait for a slot at the master, and their bytes.
func (t *table) queue() (n int, bytes int64) {
	t.mu.Lock()
	defer t.unlock()
	return t.fifo.Len(), t.queuedBytes
}

// counters returns the table's counters, without the walk snapshot makes.
func (t *table) counters() tableStats {
	t.mu.Lock()
	defer t.unlock()
	return t.stats
}

func (t *table) snapshot() (s tableStats, entries, atMaster int, replyBytes int64) {
	t.mu.Lock()
	defer t.unlock()
	for _, p := range t.byKey {
		if p.state == stateAtMaster {
			atMaster++
		}
	}
	return t.stats, len(t.byKey), atMaster, t.replyBytes
}

func ticketFrame(ticket uint64) []byte { return binary.BigEndian.AppendUint64(nil, ticket) }

func parseTicket(b []byte) (uint64, bool) {
	if len(b) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(b), true
}

func sortByCreated(ps []*pending) {
	slices.SortFunc(ps, func(a, b *pending) int { return a.created.Compare(b.created) })
}

// staleLogEvery spaces the summary lines of stale refusals: an outage of the master
// can expire thousands of requests a second, and one line per request would bury
// everything else.
const staleLogEvery = 10 * time.Second

// staleLog summarises stale refusals in one warning per period at most. Only the
// sweeper uses it.
type staleLog struct {
	log   *slog.Logger
	every time.Duration
	n     int       // refused since the last line
	since time.Time // first of them
	last  time.Time // last line
	queue func() (int, int64)
}

func (s *staleLog) add(n int, now time.Time) {
	if n > 0 {
		if s.n == 0 {
			s.since = now
		}
		s.n += n
	}
	if s.n > 0 && now.Sub(s.last) >= s.every {
		s.flush(now)
	}
}

func (s *staleLog) flush(now time.Time) {
	if s.n == 0 {
		return
	}
	queued, _ := s.queue()
	s.log.Warn("requests refused as stale: they waited at the core for a slot at the master longer than their edge allowed (their class's max age, at most --dedup-ttl); the master is slow or unreachable: check its ret port and salt_broker_core_requests_at_master. The minions retry by themselves",
		"count", s.n, "over", now.Sub(s.since).Round(time.Second), "still_queued", queued)
	s.n, s.last = 0, now
}
