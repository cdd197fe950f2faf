package tunnel

import (
	"context"
	"slices"
	"sync"
)

// Gate bounds the bytes of large transfers in flight on one connection, so they
// finish in turn instead of all sharing the link and all taking as long as the
// slowest. A transfer acquires its size and releases it when done.
//
// Why it is fair: admission is strictly first come, first served, so no transfer
// can be overtaken and none starves; each waits only for the bytes queued before
// it, and finishes about (bytes ahead of it + its own size) / link rate after it
// arrived, instead of (every byte in flight) / link rate for all of them at once.
// At least one transfer is always admitted, so one bigger than the whole budget
// still goes — alone. Callers let small transfers (an auth reply, a return's ack)
// bypass the gate altogether: they never wait behind megabytes of file chunks, and
// the budget keeps the link's queue short enough for them to get through.
//
// The waiting queue holds no bytes of its own (each waiter's data is already held
// by its caller, under that caller's bounds) and at most one entry per stream, so
// it is bounded by the connection's stream limit.
//
// The zero Gate is ready to use; every call on one Gate must pass the same budget.
type Gate struct {
	mu      sync.Mutex
	used    int64 // bytes admitted and not yet released
	holders int
	queue   []*gateWaiter // FIFO
	waiting int64         // bytes in queue
}

type gateWaiter struct {
	n      int64
	budget int64
	ready  chan struct{} // closed when admitted
}

// Acquire waits, in arrival order, until n bytes fit in budget beside what is in
// flight (or nothing is in flight), and returns the function that gives them back;
// calling it more than once is harmless. If ctx ends first it returns ctx's error
// and holds nothing.
func (g *Gate) Acquire(ctx context.Context, n, budget int64) (release func(), err error) {
	g.mu.Lock()
	if len(g.queue) == 0 && g.fits(n, budget) {
		g.take(n)
		g.mu.Unlock()
		return g.releaser(n), nil
	}
	w := &gateWaiter{n: n, budget: budget, ready: make(chan struct{})}
	g.queue = append(g.queue, w)
	g.waiting += n
	g.mu.Unlock()
	select {
	case <-w.ready:
		return g.releaser(n), nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-w.ready:
		// Admitted as ctx ended: give back what was taken for us.
		g.giveBack(n)
	default:
		i := slices.Index(g.queue, w)
		g.queue = slices.Delete(g.queue, i, i+1)
		g.waiting -= n
		g.admit() // we may have been what held the next ones back
	}
	return nil, ctx.Err()
}

// TryAcquire is Acquire without waiting: ok is false, and nothing is held, when
// the n bytes would have to queue.
func (g *Gate) TryAcquire(n, budget int64) (release func(), ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.queue) > 0 || !g.fits(n, budget) {
		return nil, false
	}
	g.take(n)
	return g.releaser(n), true
}

// fits: g.mu is held.
func (g *Gate) fits(n, budget int64) bool { return g.holders == 0 || g.used+n <= budget }

// take: g.mu is held.
func (g *Gate) take(n int64) {
	g.used += n
	g.holders++
}

// giveBack releases n bytes and admits who fits now. g.mu is held.
func (g *Gate) giveBack(n int64) {
	g.used -= n
	g.holders--
	g.admit()
}

// admit lets the head of the queue in while it fits. g.mu is held.
func (g *Gate) admit() {
	for len(g.queue) > 0 && g.fits(g.queue[0].n, g.queue[0].budget) {
		w := g.queue[0]
		g.queue[0] = nil
		g.queue = g.queue[1:]
		g.waiting -= w.n
		g.take(w.n)
		close(w.ready)
	}
}

func (g *Gate) releaser(n int64) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.giveBack(n)
			g.mu.Unlock()
		})
	}
}

// GateStats is what a Gate holds now.
type GateStats struct {
	InFlight     int64 // bytes admitted and not released
	Holders      int   // transfers admitted and not released
	Waiting      int   // transfers waiting
	WaitingBytes int64 // their bytes
}

// Stats reports the gate's state.
func (g *Gate) Stats() GateStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	return GateStats{InFlight: g.used, Holders: g.holders, Waiting: len(g.queue), WaitingBytes: g.waiting}
}
