package core

import (
	"encoding/binary"
	"slices"
	"sync"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
)

// reqKey names a request across reconnects: the edge assigns IDs within its session.
type reqKey struct {
	edgeSession uint64
	id          uint64
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
// done is closed once reply or refusal is set.
type pending struct {
	key     reqKey
	ticket  uint64 // routing frame towards the master
	frames  [][]byte
	state   reqState
	reply   [][]byte
	refusal wire.Refused
	done    chan struct{}
	created time.Time
	sentAt  time.Time
}

// TableLimits bound the dedup table.
type TableLimits struct {
	Entries    int           // requests remembered (in flight, cached or tombstoned)
	ReplyBytes int64         // bytes of cached replies
	TTL        time.Duration // how long a request is remembered, so a re-send after an outage is recognised
}

// table is the core's dedup table: each request ID reaches the master at most once,
// and its reply is kept until the edge confirms it, so a re-send after a lost
// connection gets the same reply instead of a second trip to the master.
type table struct {
	limits TableLimits
	now    func() time.Time

	mu         sync.Mutex
	byKey      map[reqKey]*pending
	byTicket   map[uint64]*pending
	nextTicket uint64
	replyBytes int64
	queue      chan *pending // to the master sender; capacity = Entries, so sends never block
	stats      tableStats
}

type tableStats struct {
	Accepted, Duplicates, Busy, Cancelled, TimedOut, LateReplies, ReplyEvictions, Expired uint64
}

func newTable(l TableLimits) *table {
	return &table{
		limits:   l,
		now:      time.Now,
		byKey:    make(map[reqKey]*pending),
		byTicket: make(map[uint64]*pending),
		queue:    make(chan *pending, l.Entries),
	}
}

// submit registers a request, or finds the one already registered under its key.
// busy reports a full table: the request is refused and the minion's own retry covers it.
func (t *table) submit(key reqKey, frames [][]byte) (p *pending, duplicate, busy bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.byKey[key]; p != nil {
		t.stats.Duplicates++
		return p, true, false
	}
	if len(t.byKey) >= t.limits.Entries {
		t.stats.Busy++
		return nil, false, true
	}
	t.nextTicket++
	p = &pending{key: key, ticket: t.nextTicket, frames: frames, done: make(chan struct{}), created: t.now()}
	t.byKey[key] = p
	t.byTicket[p.ticket] = p
	t.stats.Accepted++
	t.queue <- p
	return p, false, false
}

// take marks a queued request as sent to the master. It returns false for a
// request that was cancelled or refused while it waited.
func (t *table) take(p *pending) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p.state != stateQueued {
		return false
	}
	p.state = stateAtMaster
	p.sentAt = t.now()
	return true
}

// complete records the master's reply for a routing ticket. It returns false for a
// reply nobody waits for any more (timed out, or after a core restart).
func (t *table) complete(ticket uint64, reply [][]byte) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.byTicket[ticket]
	if p == nil || p.state != stateAtMaster {
		t.stats.LateReplies++
		return false
	}
	delete(t.byTicket, ticket)
	p.state = stateReplied
	p.reply = reply
	p.frames = nil
	t.replyBytes += int64(wire.Size(reply))
	t.evictRepliesLocked()
	close(p.done)
	return true
}

// fail ends a request at the master without a reply (the reply was unusable).
func (t *table) fail(ticket uint64, code byte, reason string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
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
	defer t.mu.Unlock()
	p := t.byKey[key]
	if p == nil || p.state != stateReplied {
		return
	}
	t.replyBytes -= int64(wire.Size(p.reply))
	p.reply = nil
	p.state = stateDelivered
}

// refuseLocked ends a request without a reply.
func (t *table) refuseLocked(p *pending, code byte, reason string) {
	if p.ticket != 0 {
		delete(t.byTicket, p.ticket)
	}
	p.frames = nil
	p.state = stateRefused
	p.refusal = wire.Refused{ID: p.key.id, Code: code, Reason: reason}
	close(p.done)
}

// cancel withdraws a request that has not reached the master. An unknown key is
// remembered as cancelled, so a late copy of it can never reach the master either.
func (t *table) cancel(key reqKey) (result byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.byKey[key]
	switch {
	case p == nil:
		if len(t.byKey) >= t.limits.Entries {
			// Cannot remember the tombstone; refusing the cancel is the safe answer
			// (the edge then treats the request as possibly at the master).
			t.stats.Busy++
			return wire.CancelAtMaster
		}
		p = &pending{key: key, done: make(chan struct{}), created: t.now()}
		t.byKey[key] = p
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
	defer t.mu.Unlock()
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

// sweep times out requests the master did not answer and forgets old entries.
// It returns how many requests at the master timed out, so their slots are freed.
func (t *table) sweep(masterTimeout time.Duration) (timedOut int) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for key, p := range t.byKey {
		switch {
		case p.state == stateAtMaster && now.Sub(p.sentAt) > masterTimeout:
			t.refuseLocked(p, wire.RefusedTimeout, "the master did not answer in time")
			t.stats.TimedOut++
			timedOut++
		case p.state != stateAtMaster && p.state != stateQueued && now.Sub(p.created) > t.limits.TTL:
			if p.state == stateReplied {
				t.replyBytes -= int64(wire.Size(p.reply))
			}
			delete(t.byKey, key)
			t.stats.Expired++
		}
	}
	return timedOut
}

// shutdown refuses everything still waiting, so no edge stream waits forever.
func (t *table) shutdown() {
	t.mu.Lock()
	defer t.mu.Unlock()
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
	defer t.mu.Unlock()
	n := 0
	for _, p := range t.byKey {
		if p.state == stateAtMaster || p.state == stateReplied {
			n++
		}
	}
	return n
}

func (t *table) snapshot() (s tableStats, entries, atMaster int, replyBytes int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
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
