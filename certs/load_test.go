package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMixUpsAreCaughtWithClearErrors: the errors an operator sees name the cause.
func TestMixUpsAreCaughtWithClearErrors(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	for _, d := range []string{dir, other} {
		if err := InitCA(d); err != nil {
			t.Fatal(err)
		}
	}
	if err := Issue(dir, "core", RoleCore, nil); err == nil || !strings.Contains(err.Error(), "needs at least one host") {
		t.Errorf("core without hosts: %v", err)
	}
	if err := Issue(dir, "core", RoleCore, []string{"core.example", "[::1]"}); err != nil {
		t.Fatal(err)
	}
	if err := Issue(dir, "edge", RoleEdge, nil); err != nil {
		t.Fatal(err)
	}
	if err := Issue(other, "stranger", RoleEdge, nil); err != nil {
		t.Fatal(err)
	}
	p := func(d, n string) string { return filepath.Join(d, n) }
	if _, err := LoadServer(p(dir, "ca.crt"), p(dir, "edge.crt"), p(dir, "edge.key"), nil); err == nil || !strings.Contains(err.Error(), `role "edge"`) {
		t.Errorf("edge certificate loaded as core: %v", err)
	}
	if _, err := LoadClient(p(dir, "ca.crt"), p(dir, "core.crt"), p(dir, "core.key")); err == nil || !strings.Contains(err.Error(), `role "core"`) {
		t.Errorf("core certificate loaded as edge: %v", err)
	}
	srv, err := LoadServer(p(dir, "ca.crt"), p(dir, "core.crt"), p(dir, "core.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The server's check explains a foreign edge and a missing certificate.
	leaf := mustLeaf(t, p(other, "stranger.crt"))
	if err := explainVerify(leaf, verifyAgainst(t, srv, leaf)); !strings.Contains(err.Error(), "issued by another CA") {
		t.Errorf("foreign edge: %v", err)
	}
	if err := srv.VerifyConnection(noCerts()); err == nil || !strings.Contains(err.Error(), "no client certificate") {
		t.Errorf("no certificate: %v", err)
	}
}

func mustLeaf(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// verifyAgainst runs the server's own check on leaf and returns its error.
func verifyAgainst(t *testing.T, srv *tls.Config, leaf *x509.Certificate) error {
	t.Helper()
	err := srv.VerifyConnection(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}})
	if err == nil {
		t.Fatal("foreign certificate verified")
	}
	var ua x509.UnknownAuthorityError
	if !errors.As(err, &ua) {
		t.Fatalf("want an unknown-authority error inside, got %v", err)
	}
	return ua
}

func noCerts() tls.ConnectionState { return tls.ConnectionState{} }
