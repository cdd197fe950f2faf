package wan

import (
	"encoding/binary"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func echoServer(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, a, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDP(buf[:n], a)
		}
	}()
	return c
}

// count sends n datagrams through the proxy and counts the echoes within wait.
func count(t *testing.T, px *UDPProxy, n int, wait time.Duration) (int, time.Duration) {
	t.Helper()
	c, err := net.Dial("udp", px.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	type result struct {
		got   int
		first time.Duration
	}
	res := make(chan result, 1)
	go func() { // read while sending: a socket buffer holds only a few hundred datagrams
		var r result
		buf := make([]byte, 64)
		_ = c.SetReadDeadline(time.Now().Add(wait + time.Duration(n)*300*time.Microsecond))
		for r.got < n {
			if _, err := c.Read(buf); err != nil {
				break
			}
			if r.got == 0 {
				r.first = time.Since(start)
			}
			r.got++
		}
		res <- r
	}()
	for i := 0; i < n; i++ {
		_, _ = c.Write([]byte("ping"))
		time.Sleep(200 * time.Microsecond)
	}
	r := <-res
	got, first := r.got, r.first
	return got, first
}

func TestUDPProxyDelayLossBlackout(t *testing.T) {
	srv := echoServer(t)
	defer srv.Close()
	px, err := NewUDPProxy("127.0.0.1:0", srv.LocalAddr().String(), Profile{Delay: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	got, first := count(t, px, 50, 2*time.Second)
	if got != 50 || first < 100*time.Millisecond || first > 400*time.Millisecond {
		t.Errorf("delay 50 ms each way: %d echoes, first after %s", got, first)
	}
	px.SetProfile(Profile{Loss: 0.3})
	got, _ = count(t, px, 1000, 2*time.Second)
	// Both directions lose 30 %: about 49 % of round trips survive.
	if got < 380 || got > 600 {
		t.Errorf("30 %% loss each way: %d of 1000 round trips", got)
	}
	px.SetProfile(Profile{})
	px.SetDown(true)
	if got, _ = count(t, px, 20, 300*time.Millisecond); got != 0 {
		t.Errorf("blackout let %d through", got)
	}
	px.SetDown(false)
	if got, _ = count(t, px, 20, time.Second); got != 20 {
		t.Errorf("after the blackout: %d of 20", got)
	}
}

// exchange sends n numbered datagrams of size bytes through px, gap apart, and
// returns the numbers the echoes carry in their order of arrival, and when the last
// one came. It stops listening once nothing has come for quiet after the sending.
func exchange(t *testing.T, px *UDPProxy, n, size int, gap, quiet time.Duration) ([]int, time.Duration) {
	t.Helper()
	c, err := net.Dial("udp", px.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var sent atomic.Bool
	start := time.Now()
	type result struct {
		seqs []int
		last time.Duration
	}
	res := make(chan result, 1)
	go func() {
		var r result
		buf := make([]byte, 2048)
		for {
			_ = c.SetReadDeadline(time.Now().Add(quiet))
			m, err := c.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && !sent.Load() {
					continue
				}
				break
			}
			if m >= 4 {
				r.seqs = append(r.seqs, int(binary.BigEndian.Uint32(buf)))
				r.last = time.Since(start)
			}
		}
		res <- r
	}()
	b := make([]byte, size)
	for i := range n {
		binary.BigEndian.PutUint32(b, uint32(i))
		_, _ = c.Write(b)
		time.Sleep(gap)
	}
	sent.Store(true)
	r := <-res
	return r.seqs, r.last
}

func newProxy(t *testing.T, p Profile) *UDPProxy {
	t.Helper()
	srv := echoServer(t)
	t.Cleanup(func() { _ = srv.Close() })
	px, err := NewUDPProxy("127.0.0.1:0", srv.LocalAddr().String(), p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = px.Close() })
	return px
}

func TestUDPProxyDuplicate(t *testing.T) {
	px := newProxy(t, Profile{Duplicate: 0.2})
	seqs, _ := exchange(t, px, 1000, 64, 200*time.Microsecond, 300*time.Millisecond)
	// 20 % more each way, and the echo server echoes every copy: 1.2 * 1.2 = 1.44.
	fwd, dup := px.Forwarded.Load(), px.Duplicated.Load()
	if len(seqs) < 1300 || len(seqs) > 1600 {
		t.Errorf("20 %% duplication each way: %d echoes of 1000", len(seqs))
	}
	if f := float64(dup) / float64(fwd); f < 0.15 || f > 0.25 {
		t.Errorf("duplicated %d of %d forwarded (%.3f)", dup, fwd, f)
	}
	t.Logf("%d echoes of 1000; duplicated %d of %d forwarded", len(seqs), dup, fwd)
}

func TestUDPProxyRate(t *testing.T) {
	// 200 KB at 1 Mbit/s is 1.6 s on the wire; a queue that holds it all loses none.
	px := newProxy(t, Profile{RateBps: 1_000_000, QueueBytes: 256 << 10})
	seqs, last := exchange(t, px, 200, 1000, 50*time.Microsecond, 500*time.Millisecond)
	if len(seqs) != 200 || last < 1300*time.Millisecond || last > 4*time.Second {
		t.Errorf("200 KB at 1 Mbit/s: %d of 200 echoes, the last after %s", len(seqs), last)
	}
	if q := px.QueueDropped.Load(); q != 0 {
		t.Errorf("%d queue drops with room for everything", q)
	}
	t.Logf("200 KB at 1 Mbit/s: last echo after %s", last)

	// The same burst into a 20 KB queue: about 20 packets fit, and a few more as
	// the link drains it while the burst goes on; the rest are dropped.
	px = newProxy(t, Profile{RateBps: 1_000_000, QueueBytes: 20_000})
	seqs, last = exchange(t, px, 200, 1000, 50*time.Microsecond, 500*time.Millisecond)
	q := px.QueueDropped.Load()
	if len(seqs) < 15 || q < 50 || len(seqs)+int(q) != 200 || q != px.Dropped.Load() {
		t.Errorf("200 KB into a 20 KB queue: %d echoes, %d queue drops of %d drops", len(seqs), q, px.Dropped.Load())
	}
	t.Logf("200 KB into a 20 KB queue at 1 Mbit/s: %d echoes, %d queue drops, last after %s", len(seqs), q, last)
}

// descents counts the arrivals numbered lower than the one before.
func descents(seqs []int) int {
	n := 0
	for i := 1; i < len(seqs); i++ {
		if seqs[i] < seqs[i-1] {
			n++
		}
	}
	return n
}

func TestUDPProxyReorder(t *testing.T) {
	px := newProxy(t, Profile{Delay: 5 * time.Millisecond})
	seqs, _ := exchange(t, px, 300, 64, time.Millisecond, 300*time.Millisecond)
	if len(seqs) != 300 || descents(seqs) != 0 {
		t.Errorf("a fixed delay without jitter: %d of 300 echoes, %d out of order", len(seqs), descents(seqs))
	}
	// A held-back datagram waits 10 ms more, long enough for several later ones,
	// sent 1 ms apart, to overtake it.
	px.SetProfile(Profile{Delay: 5 * time.Millisecond, Reorder: 0.1})
	seqs, _ = exchange(t, px, 300, 64, time.Millisecond, 300*time.Millisecond)
	if len(seqs) != 300 || descents(seqs) < 15 {
		t.Errorf("10 %% reordered each way: %d of 300 echoes, %d out of order", len(seqs), descents(seqs))
	}
	t.Logf("10 %% reordered each way: %d of 300 arrivals out of order", descents(seqs))
}

func TestUDPProxyBurstLoss(t *testing.T) {
	// Bursts of 4 packets on average; long-run loss 0.05/(0.05+0.25) = 1/6 each way.
	px := newProxy(t, Profile{BurstP: 0.05, BurstR: 0.25})
	const n = 3000
	seqs, _ := exchange(t, px, n, 64, 200*time.Microsecond, 300*time.Millisecond)
	fwd, drop := px.Forwarded.Load(), px.Dropped.Load()
	if f := float64(drop) / float64(fwd+drop); f < 0.08 || f > 0.27 {
		t.Errorf("Gilbert-Elliott loss: %d dropped of %d (%.3f, want ~1/6)", drop, fwd+drop, f)
	}
	// Independent loss at the same round-trip rate would leave gaps of 1.4 on
	// average; these come from bursts.
	got := make([]bool, n)
	for _, s := range seqs {
		got[s] = true
	}
	gaps, missing := 0, 0
	for i := range got {
		if !got[i] {
			missing++
			if i == 0 || got[i-1] {
				gaps++
			}
		}
	}
	mean := float64(missing) / float64(max(gaps, 1))
	if mean < 2 {
		t.Errorf("%d round trips lost in %d gaps: mean gap %.2f, not bursty", missing, gaps, mean)
	}
	t.Logf("dropped %d of %d packets (%.3f); %d round trips lost in %d gaps (mean %.2f)",
		drop, fwd+drop, float64(drop)/float64(fwd+drop), missing, gaps, mean)
}
