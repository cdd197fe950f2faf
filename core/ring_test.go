package core

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

func frames(s string) [][]byte { return [][]byte{[]byte(s)} }

func TestRingReplaysFromCursor(t *testing.T) {
	r := newRing(RingLimits{Count: 100, Bytes: 1 << 20, Age: time.Hour})
	for i := 0; i < 10; i++ {
		r.Append(frames("x"))
	}
	batch, gap, wait := r.read(4, 3)
	if gap != nil || wait != nil || len(batch) != 3 || batch[0].seq != 5 || batch[2].seq != 7 {
		t.Fatalf("batch %v gap %v", batch, gap)
	}
	batch, _, wait = r.read(10, 3)
	if len(batch) != 0 || wait == nil {
		t.Fatalf("at head: want a wait channel, got %d entries", len(batch))
	}
	r.Append(frames("y"))
	select {
	case <-wait:
	default:
		t.Fatal("append did not wake the reader")
	}
}

func TestRingEvictsByCountBytesAndAgeAndReportsGap(t *testing.T) {
	now := time.Unix(1000, 0)
	r := newRing(RingLimits{Count: 5, Bytes: 1 << 20, Age: time.Minute})
	r.now = func() time.Time { return now }
	for i := 0; i < 8; i++ {
		r.Append(frames("x"))
	}
	batch, gap, _ := r.read(0, 100)
	if gap == nil || gap.From != 1 || gap.To != 3 || len(batch) != 5 || batch[0].seq != 4 {
		t.Fatalf("count bound: gap %+v, %d entries", gap, len(batch))
	}

	rb := newRing(RingLimits{Count: 100, Bytes: 10, Age: time.Minute})
	for i := 0; i < 4; i++ {
		rb.Append(frames("abcd")) // 4 bytes each: only two fit in 10
	}
	if s := rb.Stats(); s.Count != 2 || s.Bytes != 8 || s.Evicted != 2 {
		t.Fatalf("byte bound: %+v", s)
	}

	now = now.Add(2 * time.Minute)
	batch, gap, _ = r.read(5, 100)
	if len(batch) != 0 || gap == nil || gap.From != 6 || gap.To != 8 {
		t.Fatalf("age bound: gap %+v, %d entries", gap, len(batch))
	}
}

func TestRingCompacts(t *testing.T) {
	r := newRing(RingLimits{Count: 10, Bytes: 1 << 30, Age: time.Hour})
	for i := 0; i < 100_000; i++ {
		r.Append(frames("x"))
	}
	if cap(r.entries) > 4096 {
		t.Fatalf("backing array grew to %d for a 10-entry ring", cap(r.entries))
	}
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// zmq4's Dial sleeps its retry interval (masterRetry, 500 ms) between tries
		// and looks at the closed socket's context only after the sleep, so a
		// master-less test's DEALER or SUB leaves it for up to 500 ms after Close:
		// longer than goleak's own ~0.5 s of retries on a loaded machine. It ends by
		// itself (dependency-pitfalls.md, zmq4 item 9).
		goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*socket).Dial"),
	)
}
