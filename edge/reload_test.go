package edge

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/tunnel"
)

// After Reload, the edge's next connection presents the new certificate; a reload
// of a broken file fails, names it, and the edge goes on with what it had.
func TestEdgeReloadUsesNewCertificateForNewConnections(t *testing.T) {
	dir := t.TempDir()
	if err := certs.InitCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := certs.Issue(dir, "core", certs.RoleCore, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if err := certs.Issue(dir, "site-a", certs.RoleEdge, nil); err != nil {
		t.Fatal(err)
	}
	file := func(n string) string { return filepath.Join(dir, n) }
	coreStore, err := certs.NewStore(certs.RoleCore, certs.Source{CA: file("ca.crt"), Cert: file("core.crt"), Key: file("core.key")})
	if err != nil {
		t.Fatal(err)
	}
	edgeStore, err := certs.NewStore(certs.RoleEdge, certs.Source{CA: file("ca.crt"), Cert: file("site-a.crt"), Key: file("site-a.key")})
	if err != nil {
		t.Fatal(err)
	}
	// A stand-in core: it notes the certificate of each connection and closes it,
	// so the edge keeps dialing.
	quiet := slog.New(slog.DiscardHandler)
	ln, err := tunnel.Listen("127.0.0.1:0", tunnel.Config{TLS: coreStore.ServerTLS(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 64)
	lctx, lstop := context.WithCancel(context.Background())
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			s, err := ln.Accept(lctx)
			if err != nil {
				return
			}
			if pc := tunnel.PeerCertificates(s); len(pc) > 0 {
				select {
				case seen <- certs.Fingerprint(pc[0]):
				default:
				}
			}
			_ = s.CloseWithError("stand-in core")
		}
	}()
	defer func() {
		lstop()
		<-accepted
		_ = ln.Close()
	}()

	e, err := New(Config{Name: "site-a", CoreAddr: ln.Addr().String(), Bind: "127.0.0.1", PubPort: freePort(t), RetPort: freePort(t),
		Certs: edgeStore, Dial: tunnel.DialOptions{Mode: tunnel.ModeQUIC}, Tunnel: tunnel.Config{Logger: quiet},
		ProbeInterval: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Logger: quiet, Registry: prometheus.NewRegistry(), DrainTimeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		_ = e.Run(ctx)
	}()
	defer func() {
		stop()
		select {
		case <-ran:
		case <-time.After(30 * time.Second):
			t.Error("the edge did not stop within 30 s")
		}
	}()
	waitFor := func(fp string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case got := <-seen:
				if got == fp {
					return
				}
			case <-deadline:
				t.Fatalf("no connection presented %s", fp)
			}
		}
	}
	waitFor(certs.Fingerprint(edgeStore.Certificate()))

	r, err := certs.Renew(dir, "site-a", certs.RenewOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Reload(e.Certs().Source()); err != nil {
		t.Fatal(err)
	}
	waitFor(r.NewFingerprint)

	if err := os.WriteFile(file("ca.crt"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.Reload(e.Certs().Source()); err == nil || !strings.Contains(err.Error(), file("ca.crt")) {
		t.Fatalf("a broken CA file: %v", err)
	}
	for len(seen) > 0 {
		<-seen
	}
	waitFor(r.NewFingerprint) // still dialing, with the material of the last good reload
}
