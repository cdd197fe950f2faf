package core

import (
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/tunnel"
)

// reloadLab is a core with a certificate store on disk (a CA, the core's
// certificate, edges site-a and site-b, an empty deny file) serving real tunnels.
type reloadLab struct {
	t    *testing.T
	dir  string
	deny string
	c    *Core
	logs *syncBuffer
}

func newReloadLab(t *testing.T) *reloadLab {
	l := &reloadLab{t: t, dir: t.TempDir(), logs: &syncBuffer{}}
	if err := certs.InitCA(l.dir); err != nil {
		t.Fatal(err)
	}
	if err := certs.Issue(l.dir, "core", certs.RoleCore, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"site-a", "site-b"} {
		if err := certs.Issue(l.dir, n, certs.RoleEdge, nil); err != nil {
			t.Fatal(err)
		}
	}
	l.deny = filepath.Join(l.dir, "denied-edges")
	if err := os.WriteFile(l.deny, []byte("# revoked edge certificates\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := certs.NewStore(certs.RoleCore, certs.Source{CA: l.file("ca.crt"), Cert: l.file("core.crt"), Key: l.file("core.key"), DenyEdges: []string{l.deny}})
	if err != nil {
		t.Fatal(err)
	}
	l.c, err = New(Config{Name: "test-core", MasterHost: "127.0.0.1", Listen: "127.0.0.1:0",
		MasterPubPort: freeTCPPort(t), MasterRetPort: freeTCPPort(t), Certs: st, Registry: prometheus.NewRegistry(), DrainTimeout: -1,
		Logger: slog.New(slog.NewTextHandler(l.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		_ = l.c.Run(ctx)
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-ran:
		case <-time.After(30 * time.Second):
			t.Error("the core did not stop within 30 s")
		}
	})
	return l
}

func (l *reloadLab) file(n string) string { return filepath.Join(l.dir, n) }

// labEdge is one edge connection that said hello.
type labEdge struct {
	sess tunnel.Session
	ctl  tunnel.Stream
}

// dial connects as edge name over mode; the error is the handshake's or the hello's.
func (l *reloadLab) dial(name string, mode tunnel.Mode) (*labEdge, error) {
	l.t.Helper()
	st, err := certs.NewStore(certs.RoleEdge, certs.Source{CA: l.file("ca.crt"), Cert: l.file(name + ".crt"), Key: l.file(name + ".key")})
	if err != nil {
		l.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr := l.c.Addr().String()
	if mode == tunnel.ModeTCP {
		addr = l.c.TCPAddr().String()
	}
	sess, err := tunnel.Dial(ctx, addr, tunnel.Config{TLSFunc: st.ClientTLS}, tunnel.DialOptions{Mode: mode})
	if err != nil {
		return nil, err
	}
	l.t.Cleanup(func() { _ = sess.CloseWithError("test over") })
	ctl, err := sess.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	if err := wire.Write(ctl, wire.THello, wire.Hello{Version: wire.Version, EdgeName: name, EdgeSession: wire.RandomID()}.Encode()); err != nil {
		return nil, err
	}
	_ = ctl.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := wire.NewReader(ctl, 1<<10).Expect(wire.THelloAck); err != nil {
		return nil, err
	}
	return &labEdge{sess: sess, ctl: ctl}, nil
}

func (l *reloadLab) mustDial(name string, mode tunnel.Mode) *labEdge {
	l.t.Helper()
	e, err := l.dial(name, mode)
	if err != nil {
		l.t.Fatalf("%s over %s: %v", name, mode, err)
	}
	return e
}

// ping proves the connection still carries traffic both ways.
func (e *labEdge) ping() error {
	if err := wire.Write(e.ctl, wire.TPing, wire.U64Body(7)); err != nil {
		return err
	}
	_ = e.ctl.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := wire.NewReader(e.ctl, 1<<10).Expect(wire.TPong)
	return err
}

func (e *labEdge) coreFingerprint(t *testing.T) string {
	t.Helper()
	pc := tunnel.PeerCertificates(e.sess)
	if len(pc) == 0 {
		t.Fatal("no core certificate on the session")
	}
	return certs.Fingerprint(pc[0])
}

// A reload swaps the core's certificate for new handshakes while an established
// edge session keeps running on the old one; a reload from a bad file fails, says
// which file, and leaves the material in use as it was.
func TestReloadSwapsCertificateKeepsSessions(t *testing.T) {
	for _, mode := range []tunnel.Mode{tunnel.ModeQUIC, tunnel.ModeTCP} {
		t.Run(string(mode), func(t *testing.T) {
			l := newReloadLab(t)
			a := l.mustDial("site-a", mode)
			before := a.coreFingerprint(t)
			if _, err := certs.Renew(l.dir, "core", certs.RenewOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := l.c.Reload(l.c.Certs().Source()); err != nil {
				t.Fatal(err)
			}
			if err := a.ping(); err != nil {
				t.Fatalf("the established session stopped at the reload: %v", err)
			}
			b := l.mustDial("site-a", mode)
			after := b.coreFingerprint(t)
			if after == before {
				t.Fatal("a new handshake still got the old core certificate")
			}
			if a.coreFingerprint(t) != before {
				t.Fatal("the established session's certificate changed")
			}

			good, err := os.ReadFile(l.file("core.crt"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(l.file("core.crt"), []byte("not a certificate\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			err = l.c.Reload(l.c.Certs().Source())
			if err == nil || !strings.Contains(err.Error(), l.file("core.crt")) || !strings.Contains(err.Error(), "keeping the old") {
				t.Fatalf("a reload of a broken certificate: %v, want an error naming the file", err)
			}
			_ = os.WriteFile(l.file("core.crt"), good, 0o644)
			if err := os.WriteFile(l.deny, []byte("zz not a fingerprint\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := l.c.Reload(l.c.Certs().Source()); err == nil || !strings.Contains(err.Error(), "line 1") {
				t.Fatalf("a reload of a broken deny file: %v, want an error naming its line", err)
			}
			if err := os.WriteFile(l.file("core.crt"), []byte("broken again"), 0o644); err != nil {
				t.Fatal(err)
			}
			c := l.mustDial("site-a", mode) // the material of the last good reload serves on
			if got := c.coreFingerprint(t); got != after {
				t.Fatalf("after failed reloads the core serves %s, want %s", got, after)
			}
			for _, e := range []*labEdge{a, b} {
				if err := e.ping(); err != nil {
					t.Fatalf("a failed reload disturbed an established session: %v", err)
				}
			}
		})
	}
}

// At a reload the core disconnects, with a line naming each, the edges its new
// material refuses: a fingerprint on the deny-list, a name no longer allowed, a CA
// no longer trusted; the others carry on, and a revoked edge cannot come back.
func TestReloadDisconnectsRefusedEdges(t *testing.T) {
	for _, mode := range []tunnel.Mode{tunnel.ModeQUIC, tunnel.ModeTCP} {
		t.Run(string(mode), func(t *testing.T) {
			l := newReloadLab(t)
			a, b := l.mustDial("site-a", mode), l.mustDial("site-b", mode)
			fpA := certs.Fingerprint(mustLeaf(t, l.file("site-a.crt")))
			if err := os.WriteFile(l.deny, []byte("# lost laptop\n"+fpA+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := l.c.Reload(l.c.Certs().Source()); err != nil {
				t.Fatal(err)
			}
			waitClosed(t, a.sess, "deny-list")
			if err := b.ping(); err != nil {
				t.Fatalf("an edge that is not revoked was disturbed: %v", err)
			}
			for _, want := range []string{"edge disconnected", "edge=site-a", fpA, "deny-list"} {
				if !strings.Contains(l.logs.String(), want) {
					t.Errorf("the log lacks %q:\n%s", want, l.logs.String())
				}
			}
			if _, err := l.dial("site-a", mode); err == nil {
				t.Fatal("a revoked edge connected again")
			}

			// Another CA only: site-b's certificate no longer chains to a trusted CA.
			other := t.TempDir()
			if err := certs.InitCA(other); err != nil {
				t.Fatal(err)
			}
			src := l.c.Certs().Source()
			src.CA = filepath.Join(other, "ca.crt")
			if err := l.c.Reload(src); err != nil {
				t.Fatal(err)
			}
			waitClosed(t, b.sess, "another CA")

			// Back to the deployment's CA, with an allow-list that leaves site-b out.
			src.CA, src.DenyEdges, src.AllowEdges = l.file("ca.crt"), nil, []string{"site-a"}
			if err := l.c.Reload(src); err != nil {
				t.Fatal(err)
			}
			a2 := l.mustDial("site-a", mode) // no longer denied
			if _, err := l.dial("site-b", mode); err == nil {
				t.Fatal("an edge outside the reloaded allow-list connected")
			}
			src.AllowEdges = []string{"site-b"}
			if err := l.c.Reload(src); err != nil {
				t.Fatal(err)
			}
			waitClosed(t, a2.sess, "allow-edge")
		})
	}
}

func waitClosed(t *testing.T, s tunnel.Session, reason string) {
	t.Helper()
	select {
	case <-s.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("the session refused at reload (%s) is still open", reason)
	}
	// QUIC carries the core's reason to the edge; TCP only closes.
	if s.Transport() == "quic" && !strings.Contains(context.Cause(s.Context()).Error(), reason) {
		t.Errorf("the edge was told %q, want the reason (%s)", context.Cause(s.Context()), reason)
	}
}

func mustLeaf(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	st, err := certs.NewStore(certs.RoleEdge, certs.Source{CA: filepath.Join(filepath.Dir(file), "ca.crt"), Cert: file, Key: strings.TrimSuffix(file, ".crt") + ".key"})
	if err != nil {
		t.Fatal(err)
	}
	return st.Certificate()
}
