package tunnel

import (
	"net"
	"runtime"
	"strings"
	"testing"
)

// A Dialer's QUIC connections all leave from one UDP socket (the core sees one
// source address and port: one NAT mapping), yet each is its own connection with
// its own handshake and window: closing one leaves the others working. Its TCP
// connections are independent, and the Dialer's Close ends what QUIC still has.
func TestDialerPoolsConnectionsOnOneSocket(t *testing.T) {
	for _, mode := range []Mode{ModeQUIC, ModeTCP} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t)
			wg := e.serveEcho(t)
			d, err := NewDialer(Config{TLS: e.pki.Client}, DialOptions{Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			const n = 3
			var sessions []Session
			for range n {
				s, err := d.Dial(e.ctx, e.ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				sessions = append(sessions, s)
			}
			locals := map[string]bool{}
			for _, s := range sessions {
				if s.Transport() != string(mode) || s.PeerName() != "core" {
					t.Errorf("transport %s peer %q", s.Transport(), s.PeerName())
				}
				locals[s.LocalAddr().String()] = true
				if err := roundTrip(e.ctx, s, []byte("hello")); err != nil {
					t.Fatal(err)
				}
			}
			if mode == ModeQUIC {
				if len(locals) != 1 || d.LocalUDPAddr() == nil {
					t.Errorf("QUIC connections from %d local addresses %v, want one socket (%v)", len(locals), locals, d.LocalUDPAddr())
				}
				for l := range locals {
					if _, port, _ := net.SplitHostPort(l); !strings.HasSuffix(d.LocalUDPAddr().String(), ":"+port) {
						t.Errorf("connection from %s, the Dialer's socket is %s", l, d.LocalUDPAddr())
					}
				}
			} else if len(locals) != n {
				t.Errorf("TCP connections from %d local addresses, want %d independent ones", len(locals), n)
			}
			_ = sessions[0].CloseWithError("one of the pool closed")
			<-sessions[0].Context().Done()
			for _, s := range sessions[1:] {
				if err := roundTrip(e.ctx, s, []byte("still here")); err != nil {
					t.Errorf("a pool member after another closed: %v", err)
				}
				if st := s.Stats(); runtime.GOOS == "linux" && (st.SmoothedRTT <= 0 || st.CongestionWindow == 0 || st.PacketsSent == 0) {
					t.Errorf("stats for sizing missing: %+v", st)
				}
			}
			for _, s := range sessions[1:] {
				_ = s.CloseWithError("done")
			}
			if err := d.Close(); err != nil {
				t.Error(err)
			}
			if _, err := d.Dial(e.ctx, e.ln.Addr().String()); mode == ModeQUIC && err == nil {
				t.Error("a closed Dialer dialed")
			}
			_ = e.ln.Close()
			wg.Wait()
		})
	}
}
