package wan

import (
	"net"
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
