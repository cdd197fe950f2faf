package edge

import (
	"testing"
	"time"
)

// The sizing rule, from the stats deltas of one interval (sizer.go).
func TestSizingRule(t *testing.T) {
	// 1000 packets, 5 % lost, RTT flat: the path drops at random.
	lossy := sizeInput{size: 1, cap: 8, waiting: true, sent: 200, lost: 10, recentSent: 1000, recentLost: 50, rttRatio: 1.05}
	cases := []struct {
		name  string
		in    func(sizeInput) sizeInput
		delta int
		why   string
	}{
		{"random loss with requests waiting grows", func(in sizeInput) sizeInput { return in }, 1, grewRandomLoss},
		{"random loss but nothing waits holds", func(in sizeInput) sizeInput { in.waiting = false; return in }, 0, ""},
		{"loss under 0.5 % holds", func(in sizeInput) sizeInput { in.recentLost = 4; return in }, 0, ""},
		{"too few packets to judge holds", func(in sizeInput) sizeInput { in.recentSent, in.recentLost = 20, 5; return in }, 0, ""},
		{"a quiet interval in a lossy window still grows", func(in sizeInput) sizeInput { in.sent, in.lost = 12, 0; return in }, 1, grewRandomLoss},
		{"RTT 1.6× the minimum is not random loss", func(in sizeInput) sizeInput { in.rttRatio = 1.6; return in }, 0, ""},
		{"at the cap holds", func(in sizeInput) sizeInput { in.size, in.cap = 3, 3; return in }, 0, ""},
		{"RTT climbing with loss steps back", func(in sizeInput) sizeInput { in.size, in.rttRatio = 3, 2.5; return in }, -1, shrankCongested},
		{"RTT climbing without loss holds", func(in sizeInput) sizeInput { in.size, in.rttRatio, in.lost = 3, 2.5, 0; return in }, 0, ""},
		{"congestion never takes the last one", func(in sizeInput) sizeInput { in.rttRatio = 2.5; return in }, 0, ""},
		{"idle shrinks", func(in sizeInput) sizeInput { in.size, in.idle, in.waiting, in.lost = 4, true, false, 0; return in }, -1, shrankIdle},
		{"idle keeps the last one", func(in sizeInput) sizeInput { in.idle, in.waiting = true, false; return in }, 0, ""},
		{"past the minions' cap shrinks", func(in sizeInput) sizeInput { in.size, in.cap = 5, 2; return in }, -1, shrankCap},
		{"one minion caps at one", func(in sizeInput) sizeInput { in.cap = 1; return in }, 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := c.in(lossy)
			delta, why := decide(in)
			if delta != c.delta || why != c.why {
				t.Fatalf("decide(%+v) = %d %q, want %d %q", in, delta, why, c.delta, c.why)
			}
		})
	}
}

// The cap is min(--max-connections, minions connected, at least 1).
func TestSizingCap(t *testing.T) {
	for _, c := range []struct{ flag, minions, want int }{{8, 50, 8}, {8, 3, 3}, {8, 0, 1}, {1, 50, 1}, {3, 3, 3}} {
		if got := poolCap(c.flag, c.minions); got != c.want {
			t.Errorf("flag %d minions %d: cap %d, want %d", c.flag, c.minions, got, c.want)
		}
	}
}

func TestLeastLoaded(t *testing.T) {
	for _, c := range []struct {
		name  string
		loads []load
		want  int
	}{
		{"none", nil, -1},
		{"fewest requests", []load{{3, 10}, {1, 9000}, {2, 0}}, 1},
		{"then fewest bytes", []load{{2, 5000}, {2, 100}, {2, 900}}, 1},
		{"the oldest on a tie", []load{{1, 100}, {1, 100}}, 0},
		{"an idle one wins", []load{{1, 0}, {0, 0}}, 1},
	} {
		if got := leastLoaded(c.loads); got != c.want {
			t.Errorf("%s: leastLoaded(%v) = %d, want %d", c.name, c.loads, got, c.want)
		}
	}
}

// The RTT floor forgets: a path whose RTT rose for good reads as flat once the
// window has passed, and a queue building within it reads as a climb.
func TestRTTFloor(t *testing.T) {
	var f rttFloor
	if f.min() != 0 {
		t.Fatalf("empty floor %v, want 0", f.min())
	}
	f.add(time.Millisecond) // the link before its delay
	for range floorWindow - 1 {
		f.add(300 * time.Millisecond)
	}
	if got := f.min(); got != time.Millisecond {
		t.Fatalf("floor %v within the window, want 1ms", got)
	}
	f.add(310 * time.Millisecond)
	if got := f.min(); got != 300*time.Millisecond {
		t.Fatalf("floor %v once the 1 ms sample left the window, want 300ms", got)
	}
	f.add(0) // no sample yet (a new connection) changes nothing
	if got := f.min(); got != 300*time.Millisecond {
		t.Fatalf("floor %v after a zero sample, want 300ms", got)
	}
}

// A connection is busy when its window holds requests back: a peak of requests over
// the window, or over half the window in flight on average.
func TestBusy(t *testing.T) {
	for _, c := range []struct {
		name             string
		peak, used, cwnd uint64
		want             bool
	}{
		{"peak over the window", 12_000, 1_000, 10_000, true},
		{"over half the window on average", 2_000, 6_000, 10_000, true},
		{"a light load", 3_000, 2_000, 10_000, false},
		{"no window known (TCP without TCP_INFO)", 12_000, 12_000, 0, false},
	} {
		if got := busy(c.peak, c.used, c.cwnd); got != c.want {
			t.Errorf("%s: busy(%d, %d, %d) = %v, want %v", c.name, c.peak, c.used, c.cwnd, got, c.want)
		}
	}
}

// The growth rule's loss rate spans lossWindow intervals: a sparse sender (TCP's
// full segments, a light load) gathers enough packets to judge.
func TestLossHistory(t *testing.T) {
	var h lossHistory
	var sent, lost uint64
	for range lossWindow {
		sent, lost = h.add(10, 1)
	}
	if sent != 10*lossWindow || lost != lossWindow {
		t.Fatalf("full window: %d sent %d lost, want %d %d", sent, lost, 10*lossWindow, lossWindow)
	}
	sent, lost = h.add(0, 0) // the oldest interval leaves
	if sent != 10*(lossWindow-1) || lost != lossWindow-1 {
		t.Fatalf("after a quiet interval: %d sent %d lost, want %d %d", sent, lost, 10*(lossWindow-1), lossWindow-1)
	}
}
