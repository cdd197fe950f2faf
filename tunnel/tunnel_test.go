package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/test/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logBuf captures the listener's log lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type env struct {
	pki  *certs.Ephemeral
	ln   *Listener
	logs *logBuf
	ctx  context.Context
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pki, err := certs.NewEphemeral([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuf{}
	ln, err := Listen("127.0.0.1:0", Config{TLS: pki.Server, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(func() { cancel(); _ = ln.Close() })
	return &env{pki: pki, ln: ln, logs: logs, ctx: ctx}
}

// serveEcho accepts sessions and echoes every stream: read all, write it back, close.
func (e *env) serveEcho(t *testing.T) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Go(func() {
		var sessions sync.WaitGroup
		defer sessions.Wait()
		for {
			s, err := e.ln.Accept(e.ctx)
			if err != nil {
				return
			}
			sessions.Go(func() {
				defer s.CloseWithError("test done")
				var streams sync.WaitGroup
				defer streams.Wait()
				for {
					st, err := s.AcceptStream(e.ctx)
					if err != nil {
						return
					}
					streams.Go(func() {
						defer st.Close()
						b, err := io.ReadAll(st)
						if err != nil {
							return
						}
						_, _ = st.Write(b)
						_ = st.CloseWrite()
						_, _ = io.Copy(io.Discard, st) // wait for the client's close: an application ack
					})
				}
			})
		}
	})
	return &wg
}

func roundTrip(ctx context.Context, s Session, payload []byte) error {
	st, err := s.OpenStream(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.Write(payload); err != nil {
		return err
	}
	if err := st.CloseWrite(); err != nil {
		return err
	}
	_ = st.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(st)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		return errors.New("echo differs")
	}
	return nil
}

func TestTransportsCarryManyStreamsAndLargeTransfers(t *testing.T) {
	for _, mode := range []Mode{ModeQUIC, ModeTCP} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t)
			wg := e.serveEcho(t)
			s, err := Dial(e.ctx, e.ln.Addr().String(), Config{TLS: e.pki.Client}, DialOptions{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			if s.Transport() != string(mode) || s.PeerName() != "core" {
				t.Errorf("transport %s peer %q", s.Transport(), s.PeerName())
			}
			big := make([]byte, 8<<20)
			_, _ = rand.Read(big)
			start := time.Now()
			if err := roundTrip(e.ctx, s, big); err != nil {
				t.Fatalf("8 MiB: %v", err)
			}
			t.Logf("%s: 8 MiB echoed in %s", mode, time.Since(start))
			var rwg sync.WaitGroup
			errs := make(chan error, 1000)
			start = time.Now()
			for i := 0; i < 1000; i++ {
				rwg.Go(func() {
					if err := roundTrip(e.ctx, s, []byte(strings.Repeat("x", 1000))); err != nil {
						errs <- err
					}
				})
			}
			rwg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("concurrent streams: %v", err)
			}
			t.Logf("%s: 1000 concurrent streams in %s", mode, time.Since(start))
			_ = s.CloseWithError("bye")
			<-s.Context().Done()
			if context.Cause(s.Context()) == nil {
				t.Error("no cause after close")
			}
			_ = e.ln.Close()
			wg.Wait()
		})
	}
}

func TestForeignEdgeAndPlainTLSAreRefusedAndLogged(t *testing.T) {
	e := newEnv(t)
	wg := e.serveEcho(t)
	other, _ := certs.NewEphemeral([]string{"127.0.0.1"})
	foreign := other.Client.Clone()
	foreign.RootCAs = e.pki.Client.RootCAs // trusts our core, but its own cert is from another CA
	for _, mode := range []Mode{ModeQUIC, ModeTCP} {
		s, err := Dial(e.ctx, e.ln.Addr().String(), Config{TLS: foreign}, DialOptions{Mode: mode})
		if err == nil {
			err = roundTrip(e.ctx, s, []byte("hello"))
			_ = s.CloseWithError("done")
		}
		if err == nil {
			t.Errorf("%s: an edge of another CA got through", mode)
		}
	}
	// A TLS client without a certificate, and garbage, on the TCP port.
	if c, err := tls.Dial("tcp", e.ln.TCPAddr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPN}}); err == nil {
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("a client without a certificate was served")
		}
		_ = c.Close()
	}
	if c, err := net.Dial("tcp", e.ln.TCPAddr().String()); err == nil {
		_, _ = c.Write([]byte("garbage\r\n\r\n"))
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		_, _ = io.Copy(io.Discard, c)
		_ = c.Close()
	}
	// The real edge still works.
	s, err := Dial(e.ctx, e.ln.Addr().String(), Config{TLS: e.pki.Client}, DialOptions{Mode: ModeQUIC})
	if err != nil || roundTrip(e.ctx, s, []byte("ok")) != nil {
		t.Fatalf("real edge after refusals: %v", err)
	}
	_ = s.CloseWithError("done")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && strings.Count(e.logs.String(), "refused") < 3 {
		time.Sleep(50 * time.Millisecond)
	}
	logs := e.logs.String()
	for _, want := range []string{"edge refused", "not trusted", "tcp peer refused"} {
		if !strings.Contains(logs, want) {
			t.Errorf("listener log lacks %q:\n%s", want, logs)
		}
	}
	_ = e.ln.Close()
	wg.Wait()
}

// tcpOnly stands in front of the listener: TCP is forwarded, UDP is swallowed —
// a network that blocks UDP.
func tcpOnly(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); _ = udp.Close(); wg.Wait() })
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := udp.ReadFrom(buf); err != nil {
				return
			}
		}
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { splice(c, target) })
		}
	})
	return ln.Addr().String()
}

func splice(c net.Conn, target string) {
	defer c.Close()
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
	<-done
}

func TestAutoFallsBackToTCPWhenUDPIsBlocked(t *testing.T) {
	e := newEnv(t)
	wg := e.serveEcho(t)
	addr := tcpOnly(t, e.ln.TCPAddr().String())
	start := time.Now()
	s, err := Dial(e.ctx, addr, Config{TLS: e.pki.Client, HandshakeTimeout: 10 * time.Second}, DialOptions{Mode: ModeAuto, FallbackDelay: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if s.Transport() != "tcp" || took > 3*time.Second {
		t.Errorf("auto with UDP blocked: %s after %s", s.Transport(), took)
	}
	if err := roundTrip(e.ctx, s, []byte("over tcp")); err != nil {
		t.Fatal(err)
	}
	_ = s.CloseWithError("done")
	// With UDP open, auto picks QUIC.
	s, err = Dial(e.ctx, e.ln.Addr().String(), Config{TLS: e.pki.Client}, DialOptions{Mode: ModeAuto})
	if err != nil || s.Transport() != "quic" {
		t.Fatalf("auto with UDP open: %v %v", s, err)
	}
	_ = s.CloseWithError("done")
	_ = e.ln.Close()
	wg.Wait()
}

// connectProxy answers status, or 407 without the expected basic credentials.
func connectProxy(t *testing.T, status int, wantAuth string) string {
	return harness.ConnectProxy(t, func(req *http.Request) int {
		if wantAuth != "" && req.Header.Get("Proxy-Authorization") != "Basic "+base64.StdEncoding.EncodeToString([]byte(wantAuth)) {
			return http.StatusProxyAuthRequired
		}
		return status
	})
}

func TestHTTPConnectProxy(t *testing.T) {
	e := newEnv(t)
	wg := e.serveEcho(t)
	good, err := ProxyURL("http://salt:secret@" + connectProxy(t, http.StatusOK, "salt:secret"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Dial(e.ctx, e.ln.Addr().String(), Config{TLS: e.pki.Client}, DialOptions{Mode: ModeTCP, Proxy: good})
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(e.ctx, s, []byte("via proxy")); err != nil {
		t.Fatal(err)
	}
	_ = s.CloseWithError("done")
	for status, creds := range map[int]string{http.StatusProxyAuthRequired: "wrong:creds", http.StatusForbidden: "salt:secret"} {
		want := fmt.Sprint(status)
		p, _ := ProxyURL("http://" + creds + "@" + connectProxy(t, status, "salt:secret"))
		_, err := Dial(e.ctx, e.ln.Addr().String(), Config{TLS: e.pki.Client}, DialOptions{Mode: ModeTCP, Proxy: p})
		if err == nil || !strings.Contains(err.Error(), "refused CONNECT") || !strings.Contains(err.Error(), want) {
			t.Errorf("proxy answering %d: %v", status, err)
		}
	}
	for _, bad := range []string{"socks5://x:1", "http://", "::"} {
		if _, err := ProxyURL(bad); err == nil {
			t.Errorf("ProxyURL(%q) accepted", bad)
		}
	}
	_ = e.ln.Close()
	wg.Wait()
}
