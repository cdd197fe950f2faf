package tunnel

import (
	"context"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestListenerCloseEndsSessionsWithReason: a core shutting down must tell its edges at
// once; a QUIC edge would otherwise wait out IdleTimeout (the UDP socket just vanishes)
// and a TCP session would outlive the listener.
func TestListenerCloseEndsSessionsWithReason(t *testing.T) {
	for _, mode := range []Mode{ModeQUIC, ModeTCP} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t)
			cli, err := Dial(e.ctx, e.ln.Addr().String(), Config{TLS: e.pki.Client}, DialOptions{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.CloseWithError("test end")
			st, err := cli.OpenStream(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = st.Write([]byte("x")) // QUIC delivers the stream (and session) only after data
			srv, err := e.ln.Accept(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_ = e.ln.Close()
			for name, s := range map[string]Session{"server": srv, "client": cli} {
				select {
				case <-s.Context().Done():
				case <-time.After(3 * time.Second):
					t.Fatalf("%s session alive 3 s after the listener closed", name)
				}
			}
			cause := context.Cause(cli.Context())
			t.Logf("%s: client saw the end after %s: %v", mode, time.Since(start), cause)
			if mode == ModeQUIC && !strings.Contains(cause.Error(), "core listener closed") {
				t.Errorf("QUIC client cause %q does not carry the reason", cause)
			}
		})
	}
}

func openFDs(t *testing.T) uint64 {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return uint64(len(ents))
}

// TestTCPAcceptSurvivesFDExhaustion: EMFILE from accept is transient; the TCP port
// must be served again once descriptors are free, not left open and dead.
func TestTCPAcceptSurvivesFDExhaustion(t *testing.T) {
	e := newEnv(t)
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	low := syscall.Rlimit{Cur: openFDs(t) + 16, Max: old.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range 64 {
		c, err := net.DialTimeout("tcp", e.ln.TCPAddr().String(), time.Second)
		if err != nil {
			break // our own side ran out too
		}
		conns = append(conns, c)
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(e.logs.String(), "tcp accept failed") {
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range conns {
		_ = c.Close()
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.logs.String(), "tcp accept failed; retrying") {
		t.Fatalf("accept never hit the descriptor limit (%d client conns):\n%s", len(conns), e.logs)
	}
	wg := e.serveEcho(t)
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	s, err := Dial(ctx, e.ln.Addr().String(), Config{TLS: e.pki.Client}, DialOptions{Mode: ModeTCP})
	if err != nil {
		t.Fatalf("TCP after descriptor exhaustion: %v", err)
	}
	if err := roundTrip(ctx, s, []byte("still served")); err != nil {
		t.Fatal(err)
	}
	_ = s.CloseWithError("done")
	_ = e.ln.Close()
	wg.Wait()
}

// TestProxyFromEnvironmentOddValues: schemes other than http are refused by name, and a
// proxy URL without a port means port 80 (as curl assumes), not "missing port".
func TestProxyFromEnvironmentOddValues(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for raw, want := range map[string]string{
		"https://127.0.0.1:1":  `scheme "https" is not supported`,
		"socks5://127.0.0.1:1": `scheme "socks5" is not supported`,
		"http://127.0.0.1":     "127.0.0.1:80",
	} {
		u, _ := url.Parse(raw)
		proxy := func(*url.URL) (*url.URL, error) { return u, nil }
		_, err := dialMaybeProxy(ctx, "127.0.0.1:9", proxy, nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("proxy %s: %v, want it to mention %q", raw, err, want)
		}
	}
	t.Setenv("HTTPS_PROXY", "http://user:pw@proxy.invalid:3128")
	t.Setenv("NO_PROXY", "core.internal")
	for host, want := range map[string]string{"core.example:4506": "proxy.invalid:3128", "core.internal:4506": "<nil>"} {
		u, err := ProxyFromEnvironment(&url.URL{Scheme: "https", Host: host})
		if err != nil {
			t.Fatal(err)
		}
		got := "<nil>"
		if u != nil {
			got = u.Host
		}
		if got != want {
			t.Errorf("ProxyFromEnvironment(%s) = %s, want %s", host, got, want)
		}
	}
}

// TestCloseAbortsABlockedWrite: the edge and core abort streams by calling Close from
// context.AfterFunc. On QUIC a FIN set while a Write waits for flow control used to
// leave that Write blocked for ever, even after the session ended (quic-go forbids
// Close concurrently with Write).
func TestCloseAbortsABlockedWrite(t *testing.T) {
	for _, mode := range []Mode{ModeQUIC, ModeTCP} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t)
			small := Config{TLS: e.pki.Client, StreamWindow: 1 << 20, ConnWindow: 4 << 20}
			cli, err := Dial(e.ctx, e.ln.Addr().String(), small, DialOptions{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.CloseWithError("test end")
			st, err := cli.OpenStream(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				buf := make([]byte, 64<<10)
				for {
					if _, err := st.Write(buf); err != nil {
						done <- err
						return
					}
				}
			}()
			srv, err := e.ln.Accept(e.ctx) // and never read: the writer blocks on flow control
			if err != nil {
				t.Fatal(err)
			}
			defer srv.CloseWithError("test end")
			time.Sleep(300 * time.Millisecond)
			start := time.Now()
			go func() { _ = st.Close() }()
			select {
			case err := <-done:
				t.Logf("%s: blocked Write returned %q %s after Close", mode, err, time.Since(start))
			case <-time.After(3 * time.Second):
				_ = cli.CloseWithError("unblock the writer")
				select {
				case <-done:
					t.Fatal("a Write blocked on flow control returned only when the session closed, not on Close")
				case <-time.After(3 * time.Second):
					t.Fatal("a Write blocked on flow control never returned, not even after the session closed")
				}
			}
			if _, err := st.Write([]byte("x")); err == nil {
				t.Error("Write after Close succeeded")
			}
		})
	}
}

// freezableRelay forwards TCP and UDP to target until frozen; then it stops passing
// anything, like a path that died without a FIN or an ICMP error.
func freezableRelay(t *testing.T, target string, frozen *atomic.Bool) string {
	t.Helper()
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ul, err := net.ListenPacket("udp", tl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	up, err := net.Dial("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var conns sync.Map
	t.Cleanup(func() {
		_ = tl.Close()
		_ = ul.Close()
		_ = up.Close()
		conns.Range(func(k, _ any) bool { _ = k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				if !frozen.Load() { // a dead path carries no FIN either
					_ = dst.Close()
				}
				return
			}
			if frozen.Load() {
				continue // swallow
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	wg.Go(func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			conns.Store(c, nil)
			conns.Store(u, nil)
			wg.Go(func() { pipe(u, c) })
			wg.Go(func() { pipe(c, u) })
		}
	})
	var client atomic.Value
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			if a, ok := client.Load().(net.Addr); ok && !frozen.Load() {
				_, _ = ul.WriteTo(buf[:n], a)
			}
		}
	})
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, a, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			client.Store(a)
			if !frozen.Load() {
				_, _ = up.Write(buf[:n])
			}
		}
	})
	return tl.Addr().String()
}

// TestSilentPathEndsBothSidesWithinIdleTimeout: when the path goes silent, both ends
// notice through keep-alives: QUIC after IdleTimeout, TCP/smux within 2×IdleTimeout
// (smux checks once per timeout period), each with a cause that says so.
func TestSilentPathEndsBothSidesWithinIdleTimeout(t *testing.T) {
	const idle = time.Second
	for _, mode := range []Mode{ModeQUIC, ModeTCP} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t)
			cfg := Config{TLS: e.pki.Server, IdleTimeout: idle, KeepAlivePeriod: idle / 4, Logger: slog.New(slog.NewTextHandler(e.logs, nil))}
			ln, err := Listen("127.0.0.1:0", cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			var frozen atomic.Bool
			addr := freezableRelay(t, ln.Addr().String(), &frozen)
			cfg.TLS = e.pki.Client
			cli, err := Dial(e.ctx, addr, cfg, DialOptions{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.CloseWithError("test end")
			st, err := cli.OpenStream(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = st.Write([]byte("x"))
			srv, err := ln.Accept(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.CloseWithError("test end")
			// Idle but alive: keep-alives hold the session past the idle timeout.
			time.Sleep(2 * idle)
			if cli.Context().Err() != nil || srv.Context().Err() != nil {
				t.Fatalf("an idle session died: client %v, server %v", context.Cause(cli.Context()), context.Cause(srv.Context()))
			}
			frozen.Store(true)
			start := time.Now()
			for name, s := range map[string]Session{"client": cli, "server": srv} {
				select {
				case <-s.Context().Done():
				case <-time.After(2*idle + time.Second - time.Since(start)):
					t.Fatalf("%s still up %s after the path went silent", name, time.Since(start))
				}
				cause := context.Cause(s.Context())
				t.Logf("%s %s: ended %s after the path went silent: %v", mode, name, time.Since(start), cause)
				if !strings.Contains(cause.Error(), "timeout") {
					t.Errorf("%s cause %q does not say it was a timeout", name, cause)
				}
			}
		})
	}
}
