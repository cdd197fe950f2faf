package certs

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestInitIssueFilesAndModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if err := InitCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := InitCA(dir); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Fatalf("second init must refuse to overwrite the CA, got %v", err)
	}
	if err := Issue(dir, "core1", RoleCore, []string{"core.example.net", "127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if err := Issue(dir, "site-a", RoleEdge, nil); err != nil {
		t.Fatal(err)
	}
	if err := Issue(dir, "../evil", RoleEdge, nil); err == nil {
		t.Fatal("a path as certificate name must be refused")
	}
	for _, k := range []string{"ca.key", "core1.key", "site-a.key"} {
		st, err := os.Stat(filepath.Join(dir, k))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, err %v", k, st.Mode().Perm(), err)
		}
	}
	srv, err := LoadServer(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "core1.crt"), filepath.Join(dir, "core1.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := LoadClient(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "site-a.crt"), filepath.Join(dir, "site-a.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, srv, cli, "core.example.net"); err != nil {
		t.Fatalf("edge → core: %v", err)
	}
	if err := handshake(t, srv, cli, "other.example.net"); err == nil {
		t.Fatal("a core certificate for other hosts was accepted")
	}
}

// handshake runs TLS between the two configs over a pipe; the error is the server's or the client's.
func handshake(t *testing.T, srv, cli *tls.Config, serverName string) error {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := cli.Clone()
	c.ServerName = serverName
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(b, srv)
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		err := s.Handshake()
		if err == nil {
			_, err = s.Write([]byte{1}) // the client's verdict on our certificate arrives here
		}
		errc <- err
		_ = b.Close()
	}()
	cl := tls.Client(a, c)
	_ = cl.SetDeadline(time.Now().Add(5 * time.Second))
	err := cl.Handshake()
	if err == nil {
		_, err = cl.Read(make([]byte, 1))
	}
	_ = a.Close()
	if serr := <-errc; err == nil {
		err = serr
	}
	return err
}

func TestRolesAndCAsAreChecked(t *testing.T) {
	one, err := NewEphemeral([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	two, err := NewEphemeral([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, one.Server, one.Client, "127.0.0.1"); err != nil {
		t.Fatalf("same CA: %v", err)
	}
	if err := handshake(t, one.Server, two.Client, "127.0.0.1"); err == nil {
		t.Fatal("an edge of another CA was accepted")
	}
	// A core certificate presented by a client: wrong role.
	coreAsClient := one.Client.Clone()
	coreAsClient.Certificates = one.Server.Certificates
	if err := handshake(t, one.Server, coreAsClient, "127.0.0.1"); err == nil {
		t.Fatal("a core certificate was accepted as an edge")
	}
	// An edge certificate serving as a core: wrong role.
	edgeAsServer := one.Server.Clone()
	edgeAsServer.Certificates = one.Client.Certificates
	if err := handshake(t, edgeAsServer, one.Client, "127.0.0.1"); err == nil {
		t.Fatal("an edge certificate was accepted as a core")
	}
}

func TestAllowList(t *testing.T) {
	dir := t.TempDir()
	if err := InitCA(dir); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"site-a", "site-b"} {
		if err := Issue(dir, n, RoleEdge, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := Issue(dir, "core", RoleCore, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	srv, err := LoadServer(p("ca.crt"), p("core.crt"), p("core.key"), []string{"site-a"})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := LoadClient(p("ca.crt"), p("site-a.crt"), p("site-a.key"))
	b, _ := LoadClient(p("ca.crt"), p("site-b.crt"), p("site-b.key"))
	if err := handshake(t, srv, a, "127.0.0.1"); err != nil {
		t.Fatalf("allowed edge: %v", err)
	}
	if err := handshake(t, srv, b, "127.0.0.1"); err == nil {
		t.Fatal("an edge outside --allow-edge was accepted")
	}
}
