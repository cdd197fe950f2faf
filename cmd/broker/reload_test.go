package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/salt-broker/salt-broker/certs"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Each signal runs one reload; a failed one is an ERROR naming what failed and the
// loop goes on; the loop ends with its context.
func TestReloadLoop(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	sig := make(chan os.Signal)
	calls := make(chan struct{}, 4)
	outcomes := []error{nil, errors.New("load core certificate /etc/salt-broker/core.crt: bad PEM"), nil}
	n := 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		reloadLoop(ctx, log, sig, func() error {
			err := outcomes[n]
			n++
			calls <- struct{}{}
			return err
		})
	}()
	for i := range outcomes {
		select {
		case sig <- syscall.SIGHUP:
		case <-time.After(5 * time.Second):
			t.Fatalf("signal %d not taken", i)
		}
		<-calls
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop did not end with its context")
	}
	out := logs.String()
	if strings.Count(out, "reload done") != 2 || strings.Count(out, "level=ERROR") != 1 ||
		!strings.Contains(out, "reload failed: still running with the previous certificates") || !strings.Contains(out, "core.crt: bad PEM") {
		t.Fatalf("log:\n%s", out)
	}
}

// A real SIGHUP reaches the reload, and the process lives on.
func TestReloadOnSIGHUP(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	// Our own registration first: whatever the timing, SIGHUP never takes the default
	// action (exit) in the test binary.
	guard := make(chan os.Signal, 1)
	signal.Notify(guard, syscall.SIGHUP)
	defer signal.Stop(guard)
	reloaded := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		reloadOnSIGHUP(ctx, slog.New(slog.DiscardHandler), func() error {
			select {
			case reloaded <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	// The loop registers itself asynchronously: signal until it answers (bounded).
	deadline := time.After(10 * time.Second)
	for {
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		select {
		case <-reloaded:
			return
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatal("SIGHUP never reached the reload")
		}
	}
}

// broker certs: --days, show and renew from the command line.
func TestCertsShowRenewDays(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"certs", "init", "--dir", dir, "--days", "365"},
		{"certs", "issue", "--dir", dir, "--name", "core1", "--role", "core", "--host", "core.example,127.0.0.1", "--days", "60"},
	} {
		if r := broker(t, nil, args...); r.code != 0 {
			t.Fatalf("broker %s: %d\n%s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	r := broker(t, nil, "certs", "show", filepath.Join(dir, "core1.crt"), filepath.Join(dir, "ca.crt"))
	for _, want := range []string{"CN=core1", "role:        core", "core.example, 127.0.0.1", "fingerprint: SHA-256 ", "(59 days left)", "(364 days left)"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("certs show lacks %q (exit %d):\n%s%s", want, r.code, r.stdout, r.stderr)
		}
	}
	r = broker(t, nil, "certs", "renew", "--dir", dir, "--name", "core1", "--days", "90")
	if r.code != 0 || !strings.Contains(r.stdout, "core certificate core1 renewed (new key, hosts core.example,127.0.0.1)") {
		t.Fatalf("renew: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r = broker(t, nil, "certs", "show", filepath.Join(dir, "core1.crt")); !strings.Contains(r.stdout, "(89 days left)") {
		t.Errorf("after renew:\n%s", r.stdout)
	}
	if r = broker(t, nil, "certs", "show"); r.code != 2 {
		t.Errorf("show without a file: exit %d, want 2\n%s", r.code, r.stderr)
	}
}

// withCertificates: a SIGHUP during run reloads, and its helpers end when run ends
// by itself.
func TestWithCertificates(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	if err := certs.InitCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := certs.Issue(dir, "e", certs.RoleEdge, nil); err != nil {
		t.Fatal(err)
	}
	st, err := certs.NewStore(certs.RoleEdge, certs.Source{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "e.crt"), Key: filepath.Join(dir, "e.key")})
	if err != nil {
		t.Fatal(err)
	}
	reloaded := make(chan struct{}, 1)
	reload := func() error {
		_, err := st.Reload(st.Source())
		select {
		case reloaded <- struct{}{}:
		default:
		}
		return err
	}
	run := withCertificates(st, slog.New(slog.DiscardHandler), reload, func(ctx context.Context) error {
		// SIGHUP is caught by now: send it until the reload answers (bounded).
		deadline := time.After(10 * time.Second)
		for {
			if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
				return err
			}
			select {
			case <-reloaded:
				return errors.New("stopped by itself")
			case <-time.After(50 * time.Millisecond):
			case <-deadline:
				return errors.New("SIGHUP never reached the reload")
			}
		}
	})
	if err := run(context.Background()); err == nil || err.Error() != "stopped by itself" {
		t.Fatal(err)
	}
}
