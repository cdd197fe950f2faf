// Package deb tests the Debian package `make deb` builds: installed with dpkg on
// this machine (CI runs as root), the installed broker says its version and
// checks the installed example configurations, and the package removes and
// purges cleanly.
package deb

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
)

const (
	pkg = "salt-broker"
	// Set through the Makefile's VERSION and COMMIT, so the test sees both the
	// -ldflags of the build and the Makefile's reshaping for dpkg.
	version    = "9.8.7-rc1"
	debVersion = "9.8.7+rc1"
	commit     = "0123456789abcdef0123456789abcdef01234567"
)

// run runs a command with a bound and returns its combined output; it fails the
// test on a non-zero exit.
func run(t *testing.T, bound time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := try(bound, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func try(bound time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("did not finish within %v: %w", bound, err)
	}
	return out.String(), err
}

func TestDebPackage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("dpkg -i needs root (CI runs as root): run as root to test the package")
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		// CI is a Debian machine run as root: dpkg missing there is a broken
		// machine, not a reason to leave the package untested.
		t.Fatal("no dpkg on this machine: the Debian package cannot be installed (the project targets Debian)")
	}
	// Installing over an operator's salt-broker and purging it would destroy
	// their configuration: refuse rather than touch it.
	if out, err := try(time.Minute, "dpkg-query", "-W", "-f=${db:Status-Status}", pkg); err == nil && strings.TrimSpace(out) != "not-installed" {
		t.Fatalf("%s is installed on this machine (%s): this test installs and purges it; dpkg --purge %s first", pkg, out, pkg)
	}
	_, userErr := user.Lookup(pkg)
	userExisted := userErr == nil

	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	// The first run installs nfpm into bin/ (about 2 min); later ones reuse it.
	run(t, 8*time.Minute, "make", "-C", root, "--no-print-directory", "deb",
		"BIN="+bin, "VERSION="+version, "COMMIT="+commit)
	debs, _ := filepath.Glob(filepath.Join(bin, pkg+"_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %q, want one %s_*.deb", debs, pkg)
	}
	if want := filepath.Join(bin, pkg+"_"+debVersion+"_"+runtime.GOARCH+".deb"); debs[0] != want {
		t.Errorf("package file %s, want %s", debs[0], want)
	}

	purged := false
	var copied []string
	t.Cleanup(func() {
		for _, f := range copied {
			if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
				t.Errorf("remove %s: %v", f, err)
			}
		}
		if !purged {
			if out, err := try(2*time.Minute, "dpkg", "--purge", pkg); err != nil {
				t.Errorf("dpkg --purge %s: %v\n%s", pkg, err, out)
			}
		}
		// postrm keeps the system user, as Debian does; one this test made goes.
		if !userExisted {
			if _, err := user.Lookup(pkg); err == nil {
				if out, err := try(time.Minute, "deluser", "--system", "--quiet", pkg); err != nil {
					t.Errorf("deluser %s: %v\n%s", pkg, err, out)
				}
			}
			if _, err := user.LookupGroup(pkg); err == nil {
				if out, err := try(time.Minute, "delgroup", "--system", "--quiet", pkg); err != nil {
					t.Errorf("delgroup %s: %v\n%s", pkg, err, out)
				}
			}
		}
	})
	run(t, 2*time.Minute, "dpkg", "-i", debs[0])

	// What dpkg installed: the version, conffiles, the user and the directories.
	if got := run(t, time.Minute, "dpkg-query", "-W", "-f=${Version}", pkg); got != debVersion {
		t.Errorf("installed version %q, want %q", got, debVersion)
	}
	conffiles := run(t, time.Minute, "dpkg-query", "-W", "-f=${Conffiles}", pkg)
	for _, f := range []string{"/etc/salt-broker/core.yaml", "/etc/salt-broker/edge.yaml"} {
		if !strings.Contains(conffiles, f) {
			t.Errorf("%s is not a conffile: %q", f, conffiles)
		}
	}
	// The units' dynamic user reads the configuration: it must be world-readable.
	for _, f := range []string{"/etc/salt-broker", "/etc/salt-broker/core.yaml", "/etc/salt-broker/edge.yaml"} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm()&0o004 == 0 {
			t.Errorf("%s: %v, %v; want it readable by the units' dynamic user", f, fi, err)
		}
	}
	if _, err := user.Lookup(pkg); err != nil {
		t.Errorf("postinst made no user %s: %v", pkg, err)
	}
	if _, err := user.LookupGroup(pkg); err != nil {
		t.Errorf("postinst made no group %s: %v", pkg, err)
	}
	if fi, err := os.Stat("/var/lib/salt-broker"); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("/var/lib/salt-broker: %v, %v; want a 0700 directory", fi, err)
	}
	for _, u := range []string{"salt-broker-core.service", "salt-broker-edge.service"} {
		b, err := os.ReadFile("/usr/lib/systemd/system/" + u)
		if err != nil {
			t.Errorf("unit not installed: %v", err)
			continue
		}
		if !bytes.Contains(b, []byte("ExecStart=/usr/bin/broker ")) || bytes.Contains(b, []byte("/usr/local/bin")) {
			t.Errorf("%s does not start the packaged /usr/bin/broker:\n%s", u, b)
		}
	}

	out := run(t, time.Minute, "/usr/bin/broker", "version")
	for _, want := range []string{"broker " + version + "\n", "commit:   " + commit + "\n", fmt.Sprintf("protocol: %d\n", wire.Version)} {
		if !strings.Contains(out, want) {
			t.Errorf("broker version lacks %q:\n%s", want, out)
		}
	}

	// The installed example configurations, with certificates where the units'
	// LoadCredential= and the files' relative names expect them
	// (docs/deployment.md, step 1).
	pki := t.TempDir()
	run(t, time.Minute, "/usr/bin/broker", "certs", "init", "--dir", pki)
	run(t, time.Minute, "/usr/bin/broker", "certs", "issue", "--dir", pki, "--name", "core", "--role", "core", "--host", "localhost")
	run(t, time.Minute, "/usr/bin/broker", "certs", "issue", "--dir", pki, "--name", "edge", "--role", "edge")
	for _, f := range []string{"ca.crt", "core.crt", "core.key", "edge.crt", "edge.key"} {
		b, err := os.ReadFile(filepath.Join(pki, f))
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join("/etc/salt-broker", f)
		if _, err := os.Stat(dst); err == nil {
			t.Fatalf("%s exists already: not overwriting it", dst)
		}
		copied = append(copied, dst)
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// deployment.md, step 3: the edge's core set with sed, as an operator does.
	run(t, time.Minute, "sed", "-i", "s/^core: .*/core: core.deb-test.example:443/", "/etc/salt-broker/edge.yaml")
	if out := run(t, time.Minute, "/usr/bin/broker", "config", "check", "--config", "/etc/salt-broker/edge.yaml"); !strings.Contains(out, "core.deb-test.example:443") {
		t.Errorf("config check of the edited edge.yaml does not show its core:\n%s", out)
	}
	for _, role := range []string{"core", "edge"} {
		out := run(t, time.Minute, "/usr/bin/broker", "config", "check", "--config", "/etc/salt-broker/"+role+".yaml")
		if !strings.Contains(out, "/etc/salt-broker/"+role+".crt") {
			t.Errorf("config check of %s.yaml does not use /etc/salt-broker/%s.crt:\n%s", role, role, out)
		}
	}

	// The installed bash completion, as bash runs it on Tab after "broker ver".
	out = run(t, time.Minute, "bash", "--norc", "--noprofile", "-c",
		`source /usr/share/bash-completion/completions/broker; COMP_WORDS=(broker ver); COMP_CWORD=1; _broker; echo "${COMPREPLY[@]}"`)
	if strings.TrimSpace(out) != "version" {
		t.Errorf("bash completion of 'broker ver' = %q, want version", out)
	}

	for _, f := range copied {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	copied = nil
	run(t, 2*time.Minute, "dpkg", "-r", pkg)
	if _, err := os.Stat("/usr/bin/broker"); !os.IsNotExist(err) {
		t.Errorf("/usr/bin/broker after dpkg -r: %v, want it gone", err)
	}
	if _, err := os.Stat("/etc/salt-broker/core.yaml"); err != nil {
		t.Errorf("dpkg -r removed the conffile core.yaml (only --purge should): %v", err)
	}
	run(t, 2*time.Minute, "dpkg", "--purge", pkg)
	purged = true
	for _, p := range []string{"/etc/salt-broker", "/var/lib/salt-broker"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s after dpkg --purge: %v, want it gone", p, err)
		}
	}
}
