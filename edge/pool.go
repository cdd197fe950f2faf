package edge

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// pool is the edge session's set of live connections to its core (DESIGN §4: one
// session, one or more connections). One congestion-controlled connection is the
// tunnel's ceiling on a lossy path, so an edge may run several in one session: the
// connect loop keeps one up (the anchor), the sizer adds and removes the others.
// Requests go to the least-loaded connection; the publication stream runs on one
// (pubLoop). A connection that dies costs nothing: its requests are re-sent under
// their IDs on the others, and the core's dedup table joins each re-send to its
// entry.
type pool struct {
	e  *Edge
	mu sync.Mutex
	// conns are the connections said hello and not yet ended, oldest first.
	conns []*conn
	// slots are those taken by a live connection or one saying hello now: each
	// connection's slot (wire.Hello.Conn) is unique, so the core replaces only the
	// connection it held in that slot.
	slots   map[uint32]bool
	changed chan struct{} // closed and replaced whenever conns changes
	// lastRequest is when a request last went on a connection: the sizer's measure
	// of idleness.
	lastRequest time.Time
}

func newPool(e *Edge) *pool {
	return &pool{e: e, slots: map[uint32]bool{}, changed: make(chan struct{}), lastRequest: time.Now()}
}

// reserveSlot takes the lowest free slot, so a connection replacing a dead one
// takes its slot, and the core closes the dead one's remains at once.
func (p *pool) reserveSlot() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	for s := uint32(0); ; s++ {
		if !p.slots[s] {
			p.slots[s] = true
			return s
		}
	}
}

func (p *pool) releaseSlot(s uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.slots, s)
}

func (p *pool) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
	p.e.metrics.connected.Set(float64(min(len(p.conns), 1)))
}

// add puts a connection that said hello in the pool. The first one after none
// marks the link's return for the retry rules (reqTable.connected).
func (p *pool) add(c *conn) {
	p.mu.Lock()
	first := len(p.conns) == 0
	p.conns = append(p.conns, c)
	p.notifyLocked()
	p.mu.Unlock()
	if first {
		p.e.reqs.connected(time.Now())
	}
}

// remove takes an ended connection out and frees its slot.
func (p *pool) remove(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns = slices.DeleteFunc(p.conns, func(o *conn) bool { return o == c })
	delete(p.slots, c.slot)
	p.notifyLocked()
}

// snapshot returns the live connections, oldest first, and a channel closed at
// the next change.
func (p *pool) snapshot() ([]*conn, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.conns), p.changed
}

func (p *pool) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// usable: the connection takes new work (not ending, not being retired).
func (c *conn) usable() bool { return c.ctx.Err() == nil && !c.retiring.Load() }

// pick returns the least-loaded usable connection (leastLoaded), or nil.
func (p *pool) pick() *conn {
	conns, _ := p.snapshot()
	conns = slices.DeleteFunc(conns, func(c *conn) bool { return !c.usable() })
	loads := make([]load, len(conns))
	for i, c := range conns {
		loads[i] = load{requests: c.inflight.Load(), bytes: c.inflightBytes.Load()}
	}
	if i := leastLoaded(loads); i >= 0 {
		return conns[i]
	}
	return nil
}

// load is what a connection carries now: requests on it awaiting their reply, and
// their bytes.
type load struct{ requests, bytes int64 }

// leastLoaded is the index of the connection with the fewest requests in flight,
// then the fewest bytes, the oldest on a tie; -1 for none. Requests first: each
// one waits for its own reply (often the master's time, not the link's), so
// spreading them spreads the waits; bytes break the tie, so a connection busy with
// a file upload gets the next small request last.
func leastLoaded(loads []load) int {
	best := -1
	for i, l := range loads {
		if best < 0 || l.requests < loads[best].requests || (l.requests == loads[best].requests && l.bytes < loads[best].bytes) {
			best = i
		}
	}
	return best
}

// dispatch puts r on the least-loaded connection; false when none is usable (the
// caller puts it back in line for the next one).
func (p *pool) dispatch(r *edgeReq) bool {
	c := p.pick()
	if c == nil {
		return false
	}
	p.mu.Lock()
	p.lastRequest = time.Now()
	p.mu.Unlock()
	c.goRequest(r)
	return true
}

// idleFor is how long no request went on any connection.
func (p *pool) idleFor(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return now.Sub(p.lastRequest)
}

// pubCarrier is the connection to run the publication stream on: the oldest usable
// one (the anchor while it lives: the stream moves as seldom as can be), or nil.
func (p *pool) pubCarrier() (*conn, <-chan struct{}) {
	conns, changed := p.snapshot()
	for _, c := range conns {
		if c.usable() {
			return c, changed
		}
	}
	return nil, changed
}

// closeConn ends the connection in slot now, as if it had died: the operator's
// way to test failover (POST /debug/close-connection?conn=N). False: none there.
func (p *pool) closeConn(slot uint32) bool {
	conns, _ := p.snapshot()
	for _, c := range conns {
		if c.slot == slot {
			c.cancel(fmt.Errorf("closed by the operator (POST /debug/close-connection?conn=%d)", slot))
			return true
		}
	}
	return false
}

// pubLoop keeps the one publication stream of the session running on one
// connection of the pool: publications stay in order because there is one stream.
// When its connection dies the stream is re-opened on a survivor from the cursor;
// the core resumes there, and what it sends twice (below the cursor) the edge
// drops (runPubs).
func (e *Edge) pubLoop(ctx context.Context) {
	for ctx.Err() == nil {
		c, changed := e.pool.pubCarrier()
		if c == nil {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return
			}
		}
		done := make(chan struct{})
		if !c.goWork(func() {
			defer close(done)
			c.carriesPubs.Store(true)
			defer c.carriesPubs.Store(false)
			c.runPubs()
		}) {
			<-c.ctx.Done() // ending: wait for the pool to drop it
			continue
		}
		<-done
		// runPubs returns only when its connection ends (it ends it on any
		// error); wait for that, so the next pick is another connection.
		<-c.ctx.Done()
	}
}
