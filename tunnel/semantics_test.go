package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// TestHalfCloseDeadlinesStatsAndPeerClose checks, on both transports, that CloseWrite
// keeps the other direction open, that deadlines surface as os.ErrDeadlineExceeded,
// that Stats move, and that the accepting side's Context ends with a cause when the
// dialling side closes.
func TestHalfCloseDeadlinesStatsAndPeerClose(t *testing.T) {
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
			if _, err := st.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if err := st.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			srv, err := e.ln.Accept(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			if srv.PeerName() != "edge" || srv.Transport() != string(mode) {
				t.Errorf("server sees peer %q over %s", srv.PeerName(), srv.Transport())
			}
			sst, err := srv.AcceptStream(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			_ = sst.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(sst) // ends with the client's half close
			if err != nil || string(got) != "ping" {
				t.Fatalf("server read %q, %v", got, err)
			}
			// Our direction is still open after the peer's FIN.
			if _, err := sst.Write([]byte("pong")); err != nil {
				t.Fatalf("write after peer's half close: %v", err)
			}
			_ = sst.CloseWrite()
			_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err = io.ReadAll(st)
			if err != nil || string(got) != "pong" {
				t.Fatalf("client read %q, %v", got, err)
			}
			_ = st.Close()
			_ = sst.Close()

			// A read deadline on an idle stream.
			idle, err := cli.OpenStream(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			_ = idle.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := idle.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("read past deadline: %v, want os.ErrDeadlineExceeded", err)
			}
			_ = idle.Close()

			cs, ss := cli.Stats(), srv.Stats()
			t.Logf("%s stats: client %+v server %+v", mode, cs, ss)
			if cs.BytesSent == 0 || cs.BytesReceived == 0 || ss.BytesSent == 0 {
				t.Errorf("stats do not move: client %+v server %+v", cs, ss)
			}
			if mode == ModeQUIC && cs.SmoothedRTT <= 0 || cs.MinRTT <= 0 || cs.CongestionWindow == 0 || cs.PacketsSent == 0 {
				t.Errorf("quic RTT, window or packets missing: %+v", cs)
			}

			_ = cli.CloseWithError("edge shutting down")
			select {
			case <-srv.Context().Done():
			case <-time.After(5 * time.Second):
				t.Fatal("server session still alive 5 s after the edge closed")
			}
			cause := context.Cause(srv.Context())
			t.Logf("%s: server saw cause %v", mode, cause)
			if cause == nil || (mode == ModeQUIC && !strings.Contains(cause.Error(), "edge shutting down")) {
				t.Errorf("cause %v", cause)
			}
			if _, err := srv.AcceptStream(e.ctx); err == nil {
				t.Error("AcceptStream on an ended session succeeded")
			}
			_ = srv.CloseWithError("done")
		})
	}
}

// TestTCPStreamsBeyondBacklogAreRefusedNotStalled: an application that stops
// accepting must not stall the smux session (dependency-pitfalls.md).
func TestTCPStreamsBeyondBacklogAreRefusedNotStalled(t *testing.T) {
	pkiEnv := newEnv(t) // only for the certificates
	logs := &logBuf{}
	ln, err := Listen("127.0.0.1:0", Config{TLS: pkiEnv.pki.Server, MaxIncomingStreams: 4, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx := pkiEnv.ctx
	cli, err := Dial(ctx, ln.Addr().String(), Config{TLS: pkiEnv.pki.Client}, DialOptions{Mode: ModeTCP})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.CloseWithError("test end")
	var opened []Stream
	for range 20 {
		st, err := cli.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = st.Write([]byte("x"))
		opened = append(opened, st)
	}
	srv, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.CloseWithError("test end")
	// The refused streams see EOF; the session stays up.
	refused := 0
	for _, st := range opened {
		_ = st.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := st.Read(make([]byte, 1)); err == io.EOF {
			refused++
		}
		_ = st.Close()
	}
	if refused == 0 || refused == len(opened) {
		t.Errorf("%d of %d streams refused, want some", refused, len(opened))
	}
	for range 4 { // the backlog the application never took
		ast, err := srv.AcceptStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = ast.Close()
	}
	var wgDone = make(chan struct{})
	go func() {
		defer close(wgDone)
		ast, err := srv.AcceptStream(ctx)
		if err != nil {
			return
		}
		defer ast.Close()
		_ = ast.SetDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(ast)
		_, _ = ast.Write(b)
		_ = ast.CloseWrite()
		_, _ = io.Copy(io.Discard, ast)
	}()
	if err := roundTrip(ctx, cli, []byte("still alive")); err != nil {
		t.Fatalf("session after refusals: %v", err)
	}
	<-wgDone
	if !strings.Contains(logs.String(), "stream refused") {
		t.Errorf("no log line for refused streams:\n%s", logs)
	}
}

// TestRefusalsOnBothTransportsAreLogged: a QUIC client without a certificate and a
// TLS client with the wrong ALPN are refused with a log line naming them.
func TestRefusalsOnBothTransportsAreLogged(t *testing.T) {
	e := newEnv(t)
	qc, err := quic.DialAddr(e.ctx, e.ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPN}}, nil)
	if err == nil {
		// TLS 1.3: the refusal shows at the first stream I/O.
		if st, err := qc.OpenStreamSync(e.ctx); err == nil {
			_, _ = st.Write([]byte("hi"))
			_ = st.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := st.Read(make([]byte, 1)); err == nil {
				t.Error("a QUIC client without a certificate was served")
			}
		}
		_ = qc.CloseWithError(0, "")
	}
	if c, err := tls.Dial("tcp", e.ln.TCPAddr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}); err == nil {
		t.Error("wrong ALPN accepted")
		_ = c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && !(strings.Contains(e.logs.String(), "no client certificate") && strings.Contains(e.logs.String(), "wrong ALPN")) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{"no client certificate", "wrong ALPN", "remote=127.0.0.1:"} {
		if !strings.Contains(e.logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, e.logs)
		}
	}
}
