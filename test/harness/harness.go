// Package harness starts and drives the project's test peers — Salt-like
// master, minions and the old forwarder, written in Python on real libzmq
// (test/peers) — and the broker binary, so end-to-end, fault and benchmark
// tests in other packages share one way to run them.
package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// PythonPath is the interpreter the peers need: Debian's, which carries
// python3-zmq (libzmq 4.3.4) and python3-msgpack.
const PythonPath = "/usr/bin/python3"

var (
	pythonOnce sync.Once
	pythonErr  error

	buildMu   sync.Mutex
	buildPath string
	buildErr  error
	buildDir  string

	tagSeq atomic.Uint64
)

// Python returns the interpreter for the peers, failing the test with a
// clear message when it or its modules are missing.
func Python(t testing.TB) string {
	t.Helper()
	pythonOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, PythonPath, "-c", "import zmq, msgpack").CombinedOutput()
		if err != nil {
			pythonErr = fmt.Errorf("%s cannot import zmq and msgpack (%v: %s); run `make deps` "+
				"(apt-get install python3-zmq python3-msgpack)", PythonPath, err, out)
		}
	})
	if pythonErr != nil {
		t.Fatal(pythonErr)
	}
	return PythonPath
}

// PeersDir is the directory holding master.py, minions.py and forwarder.py.
func PeersDir() string {
	return filepath.Join(harnessDir(), "..", "peers")
}

// ModuleRoot is the repository root (where go.mod is).
func ModuleRoot() string {
	return filepath.Clean(filepath.Join(harnessDir(), "..", ".."))
}

func harnessDir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		panic("harness: no caller information")
	}
	return filepath.Dir(file)
}

// FreePort returns a TCP port that was free on ip a moment ago. Prefer
// letting a peer bind port 0 and report it; this is for ports that must be
// known before anything binds (restarts on the same port, broker flags).
func FreePort(t testing.TB, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("free port on %s: %v", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreeUDPPort is FreePort for UDP (the tunnel's QUIC listener).
func FreeUDPPort(t testing.TB, ip string) int {
	t.Helper()
	c, err := net.ListenPacket("udp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("free udp port on %s: %v", ip, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// RaceBuild builds the broker under test with the race detector (the default, for
// tests). Benchmarks turn it off in their TestMain: the detector slows edge and core
// several times over, which would be charged to the pair.
var RaceBuild = true

// BuildBroker builds ./cmd/broker once per test binary and returns the
// binary's path. Call RemoveBuilds from TestMain to delete it afterwards.
func BuildBroker(t testing.TB) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildPath == "" && buildErr == nil {
		buildPath, buildErr = build()
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

func build() (string, error) {
	dir, err := os.MkdirTemp("", "salt-broker-harness-")
	if err != nil {
		return "", fmt.Errorf("build broker: %w", err)
	}
	buildDir = dir
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("build broker: no go tool on PATH: %w", err)
	}
	out := filepath.Join(dir, "broker")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The broker under test runs with the race detector: edge and core are where the
	// concurrency is, and only real traffic exercises it. StartBroker fails a test
	// whose broker reported a race.
	args := []string{"build", "-o", out, "./cmd/broker"}
	if RaceBuild {
		args = []string{"build", "-race", "-o", out, "./cmd/broker"}
	}
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = ModuleRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/broker: %w\n%s", err, b)
	}
	return out, nil
}

// RemoveBuilds deletes what BuildBroker built; call it after m.Run in TestMain.
func RemoveBuilds() {
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
		buildDir, buildPath, buildErr = "", "", nil
	}
}

func nextTag() string {
	return "h" + strconv.FormatUint(tagSeq.Add(1), 10)
}

// pyCmd builds the command for one peer script, passing it through wrap
// (e.g. `ip netns exec NS`) when given.
func pyCmd(t testing.TB, script string, args []string, wrap func(*exec.Cmd) *exec.Cmd) *exec.Cmd {
	full := append([]string{"-u", filepath.Join(PeersDir(), script)}, args...)
	cmd := exec.Command(Python(t), full...)
	// Peers run with a clean, predictable Python environment.
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1")
	if wrap != nil {
		cmd = wrap(cmd)
	}
	return cmd
}

// NetnsWrap returns a Wrap function that runs a peer inside network
// namespace ns with `ip netns exec`.
func NetnsWrap(ns string) func(*exec.Cmd) *exec.Cmd {
	return func(c *exec.Cmd) *exec.Cmd {
		w := exec.Command("ip", append([]string{"netns", "exec", ns, c.Path}, c.Args[1:]...)...)
		w.Env, w.Dir = c.Env, c.Dir
		return w
	}
}

// startupTimeout bounds how long a peer may take to print "ready".
const startupTimeout = 30 * time.Second

func waitReady(t testing.TB, p *Proc) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startupTimeout)
	defer cancel()
	ev, err := p.WaitMatch(ctx, "", func(ev map[string]any) bool {
		return ev["event"] == "ready" || ev["event"] == "error"
	})
	if err != nil {
		t.Fatalf("%s not ready: %v", p.Name, err)
	}
	if ev["event"] == "error" {
		t.Fatalf("%s failed to start: %v", p.Name, ev["error"])
	}
	return ev
}

// Main runs a package's tests that start brokers and peers: it removes the broker
// build afterwards and, when the tests passed, fails on leaked goroutines.
func Main(m *testing.M) {
	code := m.Run()
	RemoveBuilds()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
