package wan

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A UDP echo in B and a client in A, both real processes in their namespaces.
const echoPy = `
import socket, sys, time
mode = sys.argv[1]
if mode == "echo":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("198.18.0.2", 9000))
    while True:
        d, a = s.recvfrom(2048); s.sendto(d, a)
elif mode == "tcpsink":
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("198.18.0.2", 9001)); l.listen()
    c, _ = l.accept(); n = 0
    while True:
        d = c.recv(65536)
        if not d: break
        n += len(d)
    c.sendall(str(n).encode()); c.close()
elif mode == "ping":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2); got = 0; rtts = []
    for i in range(int(sys.argv[2])):
        t = time.time(); s.sendto(b"x" * 100, ("198.18.0.2", 9000))
        try:
            s.recvfrom(2048); got += 1; rtts.append(time.time() - t)
        except socket.timeout:
            pass
    rtts.sort()
    print(got, (rtts[len(rtts)//2] * 1000) if rtts else 0)
elif mode == "burst":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5); got = 0
    for i in range(int(sys.argv[2])):
        s.sendto(b"x" * 100, ("198.18.0.2", 9000)); time.sleep(0.001)
    try:
        while True:
            s.recvfrom(2048); got += 1
    except socket.timeout:
        pass
    print(got)
elif mode == "tcp":
    c = socket.create_connection(("198.18.0.2", 9001), timeout=20); t = time.time()
    c.sendall(b"y" * int(sys.argv[2])); c.shutdown(socket.SHUT_WR)
    print(c.recv(64).decode(), time.time() - t)
`

func run(t *testing.T, l *Lab, ns string, args ...string) string {
	t.Helper()
	out, err := l.Wrap(ns)(exec.Command("/usr/bin/python3", append([]string{"-c", echoPy}, args...)...)).Output()
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return strings.TrimSpace(string(out))
}

func background(t *testing.T, l *Lab, ns string, args ...string) {
	t.Helper()
	c := l.Wrap(ns)(exec.Command("/usr/bin/python3", append([]string{"-c", echoPy}, args...)...))
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	time.Sleep(300 * time.Millisecond)
}

func TestPacketLab(t *testing.T) {
	l, err := NewLab(Profile{Delay: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	name := l.Name
	defer func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
		out, _ := exec.Command("ip", "netns", "list").Output()
		if strings.Contains(string(out), name) {
			t.Errorf("namespaces left behind: %s", out)
		}
	}()
	background(t, l, l.NSB, "echo")
	background(t, l, l.NSB, "tcpsink")
	var got int
	var rtt float64
	parse := func(s string) { _, _ = fmt.Sscan(s, &got, &rtt) }
	parse(run(t, l, l.NSA, "ping", "20"))
	if got != 20 || rtt < 35 || rtt > 120 {
		t.Errorf("20 ms each way: %d/20 echoes, median RTT %.1f ms", got, rtt)
	}
	// TCP crosses the same forwarder and suffers its loss.
	l.SetProfile(Profile{Delay: 5 * time.Millisecond, Loss: 0.02})
	out := run(t, l, l.NSA, "tcp", "2000000")
	if !strings.HasPrefix(out, "2000000 ") {
		t.Errorf("TCP through 2 %% loss: %q", out)
	}
	t.Logf("2 MB over TCP with 5 ms delay and 2 %% loss: %s s", strings.Fields(out)[1])
	l.SetProfile(Profile{BurstP: 0.05, BurstR: 0.5})
	parse(run(t, l, l.NSA, "ping", "200"))
	if got > 190 || got < 100 {
		t.Errorf("bursty loss (long-run ~9 %% each way): %d/200 echoes", got)
	}
	l.SetProfile(Profile{})
	l.BlockUDP(true)
	parse(run(t, l, l.NSA, "ping", "5"))
	if got != 0 {
		t.Errorf("UDP blocked: %d echoes", got)
	}
	l.BlockUDP(false)
	l.SetDown(true)
	parse(run(t, l, l.NSA, "ping", "3"))
	if got != 0 {
		t.Errorf("blackout: %d echoes", got)
	}
	l.SetDown(false)
	parse(run(t, l, l.NSA, "ping", "5"))
	if got != 5 {
		t.Errorf("after the blackout: %d/5", got)
	}
	t.Logf("forwarded %d, dropped %d packets", l.Forwarded.Load(), l.Dropped.Load())
}

func newLab(t *testing.T, p Profile) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		// CI and `make test` run as root; elsewhere this is a setup error, not a pass.
		t.Fatal("the packet lab needs root (network namespaces and TUN devices): run the tests as root")
	}
	l, err := NewLab(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

func TestPacketLabRate(t *testing.T) {
	const size, rate = 500_000, 2_000_000
	l := newLab(t, Profile{Delay: 5 * time.Millisecond, RateBps: rate})
	background(t, l, l.NSB, "tcpsink")
	var n int
	var secs float64
	out := run(t, l, l.NSA, "tcp", fmt.Sprint(size))
	if _, err := fmt.Sscan(out, &n, &secs); err != nil || n != size {
		t.Fatalf("TCP through 2 Mbit/s: %q", out)
	}
	// 2 s of payload at the cap, plus headers, slow start and the odd queue drop.
	want := float64(size*8) / rate
	if secs < 0.9*want || secs > 2*want {
		t.Errorf("%d bytes through %d bit/s: %.2f s, want about %.1f s", size, rate, secs, want)
	}
	t.Logf("%d bytes over TCP through %d bit/s: %.2f s (%.1f s of payload at the cap); %d queue drops",
		size, rate, secs, want, l.QueueDropped.Load())
}

func TestPacketLabDuplicate(t *testing.T) {
	l := newLab(t, Profile{Duplicate: 0.5})
	background(t, l, l.NSB, "echo")
	var got int
	out := run(t, l, l.NSA, "burst", "100")
	if _, err := fmt.Sscan(out, &got); err != nil {
		t.Fatalf("burst: %q", out)
	}
	// Half again each way, and the echo answers every copy: about 225 echoes.
	fwd, dup := l.Forwarded.Load(), l.Duplicated.Load()
	if got < 160 || got > 300 {
		t.Errorf("50 %% duplication each way: %d echoes of 100 datagrams", got)
	}
	if f := float64(dup) / float64(fwd); f < 0.35 || f > 0.65 {
		t.Errorf("duplicated %d of %d forwarded (%.2f)", dup, fwd, f)
	}
	t.Logf("%d echoes of 100 datagrams; duplicated %d of %d forwarded", got, dup, fwd)
}
