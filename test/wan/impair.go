package wan

import (
	"container/heap"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Counters count packets through a UDPProxy or a Lab, both directions together.
type Counters struct {
	Forwarded    atomic.Uint64 // packets let through, however many copies arrive
	Dropped      atomic.Uint64 // lost, blacked out, blocked, or no room in a queue
	Duplicated   atomic.Uint64 // extra copies delivered
	QueueDropped atomic.Uint64 // the part of Dropped that found the queue full
}

const (
	defaultReorderDelay = 10 * time.Millisecond
	// A bottleneck buffer of 100 ms at the link's rate, as routers are commonly
	// sized; never so small that a handful of full-size packets overflow it.
	defaultQueueTime = 100 * time.Millisecond
	minQueueBytes    = 32 << 10
	// The delay line is a queue too, and must be bounded: 1 Gbit/s times 500 ms.
	maxHeldBytes = 64 << 20
)

// impairment is the link model UDPProxy and Lab share: it decides each packet's
// fate and delivers the survivors on time. Direction 0 and 1 have their own
// Gilbert-Elliott state and their own bottleneck; one delay line serves both.
type impairment struct {
	c            *Counters
	down, noUDP  atomic.Bool
	wake         chan struct{}
	mu           sync.Mutex
	p            Profile
	bad          [2]bool      // Gilbert-Elliott: the channel is in its bad state
	free         [2]time.Time // when each bottleneck has sent all it holds
	line         delayLine
	held, nextID int
}

func newImpairment(p Profile, c *Counters) *impairment {
	return &impairment{c: c, p: p, wake: make(chan struct{}, 1)}
}

func (im *impairment) setProfile(p Profile) {
	im.mu.Lock()
	im.p = p
	im.mu.Unlock()
}

// send puts one packet through direction dir. write gets it (or a copy) on time:
// from the caller's goroutine when it is due at once, else from run's.
func (im *impairment) send(dir int, pkt []byte, udp bool, write func([]byte)) {
	if im.down.Load() || (udp && im.noUDP.Load()) {
		im.c.Dropped.Add(1)
		return
	}
	now := time.Now()
	im.mu.Lock()
	due, n := im.decide(dir, len(pkt), now)
	inline, wake := 0, false
	for _, at := range due[:n] {
		if !at.After(now) {
			inline++
			continue
		}
		heap.Push(&im.line, delayed{at: at, id: im.nextID, pkt: append([]byte(nil), pkt...), write: write})
		im.nextID++
		im.held += len(pkt)
		wake = wake || im.line[0].at.Equal(at)
	}
	im.mu.Unlock()
	if wake {
		select {
		case im.wake <- struct{}{}:
		default:
		}
	}
	for range inline {
		write(pkt)
	}
}

// decide returns when each copy of a packet of size bytes is due (none when it is
// dropped) and counts it. im.mu is held.
func (im *impairment) decide(dir, size int, now time.Time) (due [2]time.Time, n int) {
	p := im.p
	drop := func(full bool) ([2]time.Time, int) {
		im.c.Dropped.Add(1)
		if full {
			im.c.QueueDropped.Add(1)
		}
		return due, 0
	}
	if im.held+size > maxHeldBytes {
		return drop(true)
	}
	if p.BurstP > 0 {
		if im.bad[dir] {
			im.bad[dir] = rand.Float64() >= p.BurstR
		} else {
			im.bad[dir] = rand.Float64() < p.BurstP
		}
		if im.bad[dir] {
			return drop(false)
		}
	}
	if p.Loss > 0 && rand.Float64() < p.Loss {
		return drop(false)
	}
	d := p.Delay
	if p.Jitter > 0 {
		d += time.Duration(rand.Int64N(int64(p.Jitter)))
	}
	if p.Reorder > 0 && rand.Float64() < p.Reorder {
		if p.ReorderDelay > 0 {
			d += p.ReorderDelay
		} else {
			d += defaultReorderDelay
		}
	}
	copies := 1
	if p.Duplicate > 0 && rand.Float64() < p.Duplicate {
		copies = 2
	}
	for range copies {
		at := now
		if p.RateBps > 0 {
			// The packet waits behind what the bottleneck still holds, then takes its
			// own transmission time; a duplicate is one more packet to send.
			start := now
			if im.free[dir].After(now) {
				start = im.free[dir]
			}
			backlog := start.Sub(now).Seconds() * float64(p.RateBps) / 8
			if backlog > 0 && backlog+float64(size) > float64(p.queueBytes()) {
				if n == 0 {
					return drop(true)
				}
				break // no room for the duplicate: the original alone goes
			}
			at = start.Add(time.Duration(int64(size) * 8 * int64(time.Second) / p.RateBps))
			im.free[dir] = at
		}
		due[n] = at.Add(d)
		n++
	}
	im.c.Forwarded.Add(1)
	if n == 2 {
		im.c.Duplicated.Add(1)
	}
	return due, n
}

func (p Profile) queueBytes() int {
	if p.QueueBytes > 0 {
		return p.QueueBytes
	}
	return max(int(float64(p.RateBps)/8*defaultQueueTime.Seconds()), minQueueBytes)
}

// run delivers delayed packets when they are due, until done is closed; what is
// still in the line then is discarded with the link.
func (im *impairment) run(done <-chan struct{}) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-im.wake:
		case <-t.C:
		}
		for {
			im.mu.Lock()
			if len(im.line) == 0 {
				im.mu.Unlock()
				break
			}
			if wait := time.Until(im.line[0].at); wait > 0 {
				t.Reset(wait)
				im.mu.Unlock()
				break
			}
			d := heap.Pop(&im.line).(delayed)
			im.held -= len(d.pkt)
			im.mu.Unlock()
			d.write(d.pkt)
		}
	}
}

type delayed struct {
	at    time.Time
	id    int // arrival order: equal due times leave in it, so no spurious reordering
	pkt   []byte
	write func([]byte)
}

type delayLine []delayed

func (l delayLine) Len() int { return len(l) }
func (l delayLine) Less(i, j int) bool {
	if l[i].at.Equal(l[j].at) {
		return l[i].id < l[j].id
	}
	return l[i].at.Before(l[j].at)
}
func (l delayLine) Swap(i, j int) { l[i], l[j] = l[j], l[i] }
func (l *delayLine) Push(x any)   { *l = append(*l, x.(delayed)) }
func (l *delayLine) Pop() any {
	old := *l
	d := old[len(old)-1]
	old[len(old)-1] = delayed{}
	*l = old[:len(old)-1]
	return d
}
