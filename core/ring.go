package core

import (
	"sync"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
)

// RingLimits bound the replay ring; the oldest publications are evicted first
// when any limit is reached.
type RingLimits struct {
	Count int           // publications kept
	Bytes int64         // payload bytes kept
	Age   time.Duration // oldest publication kept
}

type ringEntry struct {
	seq    uint64
	frames [][]byte
	size   int
	at     time.Time
}

// ring numbers the master's publications and keeps the newest of them for replay.
// Append never blocks: the SUB loop that feeds it must drain the master at full
// speed whatever the tunnel does (the master drops silently above its pub_hwm).
type ring struct {
	limits RingLimits
	now    func() time.Time

	mu      sync.Mutex
	entries []ringEntry // entries[start:] are live, in sequence order
	start   int
	bytes   int64
	head    uint64        // last sequence assigned; 0 = none yet
	wake    chan struct{} // closed and replaced at every append
	evicted uint64
}

func newRing(l RingLimits) *ring {
	return &ring{limits: l, now: time.Now, wake: make(chan struct{})}
}

// Append numbers one publication and stores it.
func (r *ring) Append(frames [][]byte) uint64 {
	now := r.now()
	r.mu.Lock()
	r.head++
	seq := r.head
	size := wire.Size(frames)
	r.entries = append(r.entries, ringEntry{seq: seq, frames: frames, size: size, at: now})
	r.bytes += int64(size)
	r.evictLocked(now)
	wake := r.wake
	r.wake = make(chan struct{})
	r.mu.Unlock()
	close(wake)
	return seq
}

func (r *ring) evictLocked(now time.Time) {
	for r.start < len(r.entries) {
		e := &r.entries[r.start]
		live := len(r.entries) - r.start
		if live <= r.limits.Count && r.bytes <= r.limits.Bytes && now.Sub(e.at) <= r.limits.Age {
			break
		}
		r.bytes -= int64(e.size)
		*e = ringEntry{}
		r.start++
		r.evicted++
	}
	// Compact once half the backing array is dead, so memory follows the live set.
	if r.start > 1024 && r.start*2 > len(r.entries) {
		n := copy(r.entries, r.entries[r.start:])
		clear(r.entries[n:])
		r.entries = r.entries[:n]
		r.start = 0
	}
}

// read returns up to max publications after cursor. When publications after the
// cursor were already evicted, gap names them and the batch starts after it.
// When nothing is available, wait is closed at the next append.
func (r *ring) read(cursor uint64, max int) (batch []ringEntry, gap *wire.Gap, wait <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evictLocked(r.now())
	oldest := r.head + 1
	if r.start < len(r.entries) {
		oldest = r.entries[r.start].seq
	}
	if cursor+1 < oldest {
		gap = &wire.Gap{From: cursor + 1, To: oldest - 1}
		cursor = oldest - 1
	}
	if cursor >= r.head {
		return nil, gap, r.wake
	}
	first := r.start + int(cursor+1-oldest)
	last := min(len(r.entries), first+max)
	return append([]ringEntry(nil), r.entries[first:last]...), gap, nil
}

// Head is the last sequence assigned.
func (r *ring) Head() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.head
}

type ringStats struct {
	Head, Evicted uint64
	Count         int
	Bytes         int64
	OldestAge     time.Duration
}

func (r *ring) Stats() ringStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := ringStats{Head: r.head, Evicted: r.evicted, Count: len(r.entries) - r.start, Bytes: r.bytes}
	if s.Count > 0 {
		s.OldestAge = r.now().Sub(r.entries[r.start].at)
	}
	return s
}
