package wan

import (
	"testing"
	"time"
)

func TestPacketLabBulk(t *testing.T) {
	const rate, port = 4_000_000, 9100
	l := newLab(t, Profile{Delay: 5 * time.Millisecond, RateBps: rate})
	if _, err := l.StartBulk(l.NSA, l.NSA, port); err == nil {
		t.Error("a bulk flow within one namespace was accepted")
	}
	l.TallyPort(port)
	b, err := l.StartBulk(l.NSB, l.NSA, port)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	time.Sleep(2 * time.Second)
	got := b.Bytes()
	elapsed := time.Since(start)
	if err := b.Close(); err != nil {
		t.Errorf("the flow stopped by itself: %v", err)
	}
	if got == 0 {
		t.Fatal("the sink received nothing")
	}
	// The bottleneck's bound: what it let through in elapsed (plus what its queue and
	// the path held when the sample was taken) — never more.
	if bound := float64(rate)/8*elapsed.Seconds() + float64(Profile{RateBps: rate}.queueBytes()) + 64<<10; float64(got) > bound {
		t.Errorf("%d bytes through %d bit/s in %v: more than the cap lets through (%.0f)", got, rate, elapsed, bound)
	}
	flow, other := l.Tally()
	// B to A carries the data, headers included; A to B the acknowledgements.
	if flow[1] < uint64(got) || flow[0] == 0 {
		t.Errorf("tally of port %d: %d bytes B to A, %d A to B, for %d payload bytes received", port, flow[1], flow[0], got)
	}
	if other[1] > flow[1]/10 {
		t.Errorf("tally: %d bytes B to A counted as other traffic, %d as the flow's", other[1], flow[1])
	}
	t.Logf("bulk flow: %d bytes in %v (%.2f Mbit/s of %d); lab tally: flow %d/%d bytes (A→B/B→A), other %d/%d",
		got, elapsed.Round(time.Millisecond), float64(got)*8/elapsed.Seconds()/1e6, rate/1_000_000, flow[0], flow[1], other[0], other[1])
}
