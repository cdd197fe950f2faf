package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// pki makes a CA in a temp dir with core "core" (127.0.0.1) and the edges named.
func pki(t *testing.T, edges ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := InitCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := Issue(dir, "core", RoleCore, []string{"127.0.0.1", "core.example"}); err != nil {
		t.Fatal(err)
	}
	for _, e := range edges {
		if err := Issue(dir, e, RoleEdge, nil); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func src(dir, name string) Source {
	return Source{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
}

func TestDaysSetsValidity(t *testing.T) {
	dir := t.TempDir()
	if err := InitCADays(dir, 100); err != nil {
		t.Fatal(err)
	}
	if err := IssueDays(dir, "e", RoleEdge, nil, 10); err != nil {
		t.Fatal(err)
	}
	for file, days := range map[string]int{"ca.crt": 100, "e.crt": 10} {
		left := time.Until(mustLeaf(t, filepath.Join(dir, file)).NotAfter)
		if d := int(left.Hours()/24 + 0.5); d != days {
			t.Errorf("%s: %d days left, want %d", file, d, days)
		}
	}
	if err := IssueDays(dir, "long", RoleEdge, nil, 200); err == nil || !strings.Contains(err.Error(), "outlast the CA") {
		t.Errorf("a leaf outliving its CA: %v", err)
	}
	if err := IssueDays(dir, "neg", RoleEdge, nil, -1); err == nil {
		t.Error("negative days accepted")
	}
}

func TestShowSaysWhatAFileHolds(t *testing.T) {
	dir := pki(t, "site-a")
	show := func(file string) string {
		t.Helper()
		var b bytes.Buffer
		if err := Show(&b, filepath.Join(dir, file), time.Now()); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	core := show("core.crt")
	fp := Fingerprint(mustLeaf(t, filepath.Join(dir, "core.crt")))
	for _, want := range []string{"one certificate", "CN=core", "role:        core", "127.0.0.1", "core.example", "SHA-256 " + fp, "not before:", "not after:", "729 days left"} {
		if !strings.Contains(core, want) {
			t.Errorf("show core.crt lacks %q:\n%s", want, core)
		}
	}
	if ca := show("ca.crt"); !strings.Contains(ca, "role:        CA") {
		t.Errorf("show ca.crt:\n%s", ca)
	}
	if key := show("core.key"); !strings.Contains(key, "a private key (ECDSA P-256)") || !strings.Contains(key, "its certificate: "+filepath.Join(dir, "core.crt")) {
		t.Errorf("show core.key:\n%s", key)
	}
	bundle := filepath.Join(dir, "bundle.crt")
	a, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	other := t.TempDir()
	if err := InitCA(other); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(other, "ca.crt"))
	if err := os.WriteFile(bundle, append(a, b...), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := show("bundle.crt"); !strings.Contains(out, "a CA bundle of 2 certificates") || !strings.Contains(out, "certificate 2:") {
		t.Errorf("show bundle:\n%s", out)
	}
	_ = os.WriteFile(filepath.Join(dir, "junk"), []byte("hello"), 0o644)
	if err := Show(&bytes.Buffer{}, filepath.Join(dir, "junk"), time.Now()); err == nil || !strings.Contains(err.Error(), "no PEM certificate or private key") {
		t.Errorf("show junk: %v", err)
	}
	var soon bytes.Buffer
	_ = Show(&soon, filepath.Join(dir, "site-a.crt"), time.Now().Add(710*24*time.Hour))
	if !strings.Contains(soon.String(), "renew it now") {
		t.Errorf("a certificate near its end:\n%s", soon.String())
	}
}

func TestRenewKeepsRoleAndHosts(t *testing.T) {
	dir := pki(t)
	file := filepath.Join(dir, "core.crt")
	old := mustLeaf(t, file)
	oldKey, _ := os.ReadFile(filepath.Join(dir, "core.key"))
	r, err := Renew(dir, "core", RenewOptions{Days: 30})
	if err != nil {
		t.Fatal(err)
	}
	nw := mustLeaf(t, file)
	if roleOf(nw) != RoleCore || strings.Join(nw.DNSNames, ",") != "core.example" || len(nw.IPAddresses) != 1 || !nw.IPAddresses[0].Equal(old.IPAddresses[0]) {
		t.Errorf("renewed certificate: role %q, DNS %v, IPs %v", roleOf(nw), nw.DNSNames, nw.IPAddresses)
	}
	if r.NewFingerprint == r.OldFingerprint || r.NewFingerprint != Fingerprint(nw) || r.KeptKey {
		t.Errorf("renewed: %+v", r)
	}
	if d := int(time.Until(nw.NotAfter).Hours()/24 + 0.5); d != 30 {
		t.Errorf("renewed for %d days, want 30", d)
	}
	newKey, _ := os.ReadFile(filepath.Join(dir, "core.key"))
	if bytes.Equal(oldKey, newKey) {
		t.Error("renew kept the key by default")
	}
	if st, err := os.Stat(filepath.Join(dir, "core.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("renewed key mode: %v %v", st.Mode(), err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "core.key.old")); !bytes.Equal(b, oldKey) {
		t.Error("the previous key was not kept as .old")
	}
	if _, err := tls.LoadX509KeyPair(file, filepath.Join(dir, "core.key")); err != nil {
		t.Fatalf("renewed pair: %v", err)
	}
	if _, err := Renew(dir, "core", RenewOptions{KeepKey: true}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "core.key")); !bytes.Equal(b, newKey) {
		t.Error("--keep-key changed the key")
	}
	if _, err := Renew(dir, "nobody", RenewOptions{}); err == nil {
		t.Error("renewing a certificate that does not exist")
	}
	// A CA rollover: the new CA renews the certificate the old one issued.
	next := t.TempDir()
	if err := InitCA(next); err != nil {
		t.Fatal(err)
	}
	if _, err := Renew(next, "core", RenewOptions{From: file}); err != nil {
		t.Fatal(err)
	}
	if got := mustLeaf(t, filepath.Join(next, "core.crt")); got.Issuer.String() != mustLeaf(t, filepath.Join(next, "ca.crt")).Subject.String() || len(got.DNSNames) != 1 {
		t.Errorf("rolled over: issuer %s, DNS %v", got.Issuer, got.DNSNames)
	}
}

func TestDenyListFormats(t *testing.T) {
	dir := pki(t, "e")
	fp := Fingerprint(mustLeaf(t, filepath.Join(dir, "e.crt")))
	plain := strings.ToLower(strings.ReplaceAll(fp, ":", ""))
	for _, v := range []string{fp, plain, "sha256:" + plain, "SHA256 Fingerprint=" + fp} {
		d, err := parseDeny([]string{v})
		if err != nil || !d[fp] {
			t.Errorf("%q: %v %v", v, d, err)
		}
	}
	f := filepath.Join(dir, "deny")
	_ = os.WriteFile(f, []byte("# comment\n\n"+plain+"  # the lost laptop\n"), 0o644)
	if d, err := parseDeny([]string{f}); err != nil || !d[fp] || len(d) != 1 {
		t.Errorf("file: %v %v", d, err)
	}
	_ = os.WriteFile(f, []byte(plain+"\nabc\n"), 0o644)
	if _, err := parseDeny([]string{f}); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("bad line: %v", err)
	}
	if _, err := parseDeny([]string{filepath.Join(dir, "missing")}); err == nil || !strings.Contains(err.Error(), "neither a SHA-256 fingerprint") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := NewStore(RoleEdge, Source{CA: src(dir, "e").CA, Cert: src(dir, "e").Cert, Key: src(dir, "e").Key, DenyEdges: []string{fp}}); err == nil {
		t.Error("an edge store took a deny-list")
	}
}

// The edge's store hands each new dial the current material, and a failed reload
// leaves it as it was.
func TestStoreReloadEdgeSide(t *testing.T) {
	dir := pki(t, "e")
	srv, err := NewStore(RoleCore, src(dir, "core"))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := NewStore(RoleEdge, src(dir, "e"))
	if err != nil {
		t.Fatal(err)
	}
	before := cli.ClientTLS()
	if err := handshake(t, srv.ServerTLS(), before, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := Renew(dir, "e", RenewOptions{}); err != nil {
		t.Fatal(err)
	}
	ch, err := cli.Reload(cli.Source())
	if err != nil || !ch.Cert || ch.CA || ch.Fingerprint != Fingerprint(mustLeaf(t, filepath.Join(dir, "e.crt"))) {
		t.Fatalf("reload: %+v %v", ch, err)
	}
	after := cli.ClientTLS()
	if after.Certificates[0].Leaf.Equal(before.Certificates[0].Leaf) {
		t.Fatal("the next dial would present the old certificate")
	}
	if err := handshake(t, srv.ServerTLS(), after, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	// The core's certificate does not cover this name: crypto/tls checks it per dial.
	if err := handshake(t, srv.ServerTLS(), after, "elsewhere.example"); err == nil {
		t.Fatal("a core certificate for other hosts was accepted")
	}
	_ = os.WriteFile(filepath.Join(dir, "e.key"), []byte("broken"), 0o600)
	if _, err := cli.Reload(cli.Source()); err == nil || !strings.Contains(err.Error(), "e.key") {
		t.Fatalf("broken key: %v", err)
	}
	if !cli.Certificate().Equal(after.Certificates[0].Leaf) {
		t.Fatal("a failed reload changed the material")
	}
}

func TestExpiryMetricAndWarning(t *testing.T) {
	dir := t.TempDir()
	if err := InitCADays(dir, 400); err != nil {
		t.Fatal(err)
	}
	if err := IssueDays(dir, "core", RoleCore, []string{"127.0.0.1"}, 20); err != nil {
		t.Fatal(err)
	}
	st, err := NewStore(RoleCore, src(dir, "core"))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := RegisterExpiry(reg, st); err != nil {
		t.Fatal(err)
	}
	check := func() {
		t.Helper()
		ca := st.CAs()[0]
		want := fmt.Sprintf(`# HELP %[1]s x
# TYPE %[1]s gauge
%[1]s{name=%[2]q,role="ca"} %[3]d
%[1]s{name="core",role="core"} %[4]d
`, ExpiryMetric, ca.Subject.CommonName, ca.NotAfter.Unix(), st.Certificate().NotAfter.Unix())
		want = strings.Replace(want, " x\n", " "+helpOf(t, reg)+"\n", 1)
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), ExpiryMetric); err != nil {
			t.Fatal(err)
		}
	}
	check()

	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if n := st.WarnExpiry(log); n != 1 || !strings.Contains(logs.String(), "certificate expires soon") || !strings.Contains(logs.String(), "days_left=19") {
		t.Fatalf("%d warnings:\n%s", n, logs.String())
	}
	logs.Reset()
	if n := st.warnExpiry(log, time.Now().Add(500*24*time.Hour)); n != 2 || strings.Count(logs.String(), "certificate expired") != 2 {
		t.Fatalf("%d at 500 days:\n%s", n, logs.String())
	}

	// The metric follows a reload.
	if _, err := Renew(dir, "core", RenewOptions{Days: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Reload(st.Source()); err != nil {
		t.Fatal(err)
	}
	check()
	logs.Reset()
	if n := st.WarnExpiry(log); n != 0 {
		t.Fatalf("renewed for 100 days, still warned:\n%s", logs.String())
	}
}

// WatchExpiry warns at start and at each tick, and stops with its context.
func TestWatchExpiry(t *testing.T) {
	dir := t.TempDir()
	if err := InitCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := IssueDays(dir, "e", RoleEdge, nil, 5); err != nil {
		t.Fatal(err)
	}
	st, err := NewStore(RoleEdge, src(dir, "e"))
	if err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 8)
	log := slog.New(slog.NewTextHandler(chanWriter(lines), nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.watchExpiry(ctx, log, 10*time.Millisecond, time.Now)
	}()
	for i := range 2 {
		select {
		case l := <-lines:
			if !strings.Contains(l, "certificate expires soon") || !strings.Contains(l, "role=edge") {
				t.Fatalf("line %d: %s", i, l)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("warning %d never came", i)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher did not stop with its context")
	}
}

type chanWriter chan string

func (c chanWriter) Write(p []byte) (int, error) {
	select {
	case c <- string(p):
	default: // the test reads two; later ones may be dropped
	}
	return len(p), nil
}

func helpOf(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 {
		t.Fatalf("gather: %d families, %v", len(mfs), err)
	}
	return mfs[0].GetHelp()
}

// Two CAs of one name in a bundle (made the same day) keep a series each.
func TestExpiryNamesOfABundle(t *testing.T) {
	dir, other := pki(t), t.TempDir()
	if err := InitCA(other); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	b, _ := os.ReadFile(filepath.Join(other, "ca.crt"))
	bundle := filepath.Join(dir, "bundle.crt")
	if err := os.WriteFile(bundle, append(a, b...), 0o644); err != nil {
		t.Fatal(err)
	}
	s := src(dir, "core")
	s.CA = bundle
	st, err := NewStore(RoleCore, s)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := RegisterExpiry(reg, st); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, ExpiryMetric); err != nil || n != 3 {
		t.Fatalf("%d series (want the core's and two CAs'), %v", n, err)
	}
}
