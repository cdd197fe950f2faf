// Package deploy tests what deploy/ ships, as an operator uses it: the example
// configurations through the real binary (`broker config check`, then an edge and a
// core started from them with nothing but --config, carrying a tunnel), and the
// systemd units through systemd-analyze.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	deployDir = "../../deploy"
	// runBound bounds each run of the broker or systemd-analyze; a bound, not a timing assertion.
	runBound = 60 * time.Second
	// tunnelBound bounds the wait for the edge to report its tunnel to the core up
	// (on loopback it takes well under a second).
	tunnelBound = 30 * time.Second
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// brokerBin builds the broker once into a directory every test of the package shares.
func brokerBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "salt-broker-deploy-test")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "broker")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", binPath, "../../cmd/broker").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs the binary with env added to an environment without BROKER_* and
// CREDENTIALS_DIRECTORY, and waits for it to exit.
func run(t *testing.T, env []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runBound)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = cleanEnv(env)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %s did not exit within %v\n%s", name, strings.Join(args, " "), runBound, stderr.String())
	}
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return r
}

func cleanEnv(add []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BROKER_") && !strings.HasPrefix(kv, "CREDENTIALS_DIRECTORY=") {
			env = append(env, kv)
		}
	}
	return append(env, add...)
}

// pki issues a CA, a core and an edge certificate with `broker certs` into dir, under
// the names the units' LoadCredential= lines give them (ca.crt, core.key, ...).
func pki(t *testing.T, bin, dir string) {
	t.Helper()
	for _, args := range [][]string{
		{"certs", "init", "--dir", dir},
		{"certs", "issue", "--dir", dir, "--name", "core", "--role", "core", "--host", "127.0.0.1"},
		{"certs", "issue", "--dir", dir, "--name", "edge", "--role", "edge"},
	} {
		if r := run(t, nil, bin, args...); r.code != 0 {
			t.Fatalf("broker %s: exit %d\n%s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
}

func readDeploy(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// setKey sets key in an example: the line setting it or showing its default
// ("# key: value") becomes "key: value"; a key on no line is appended.
func setKey(t *testing.T, yaml, key, value string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^(# )?` + regexp.QuoteMeta(key) + `:.*$`)
	loc := re.FindStringIndex(yaml)
	if loc == nil {
		return yaml + key + ": " + value + "\n"
	}
	return yaml[:loc[0]] + key + ": " + value + yaml[loc[1]:]
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	return p
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// The example files pass `broker config check` as shipped but for the paths a test
// machine has: the certificates beside the file (the names the units'
// LoadCredential= lines give them) and a state directory of the test's.
func TestExamplesPassConfigCheck(t *testing.T) {
	bin := brokerBin(t)
	dir := t.TempDir()
	pki(t, bin, dir)
	for _, roleName := range []string{"edge", "core"} {
		t.Run(roleName, func(t *testing.T) {
			text := readDeploy(t, roleName+".yaml")
			if roleName == "edge" {
				text = setKey(t, text, "state-dir", filepath.Join(dir, "state"))
			}
			path := filepath.Join(dir, roleName+".yaml")
			writeFile(t, path, text)
			r := run(t, nil, bin, "config", "check", "--config", path)
			if r.code != 0 {
				t.Fatalf("config check: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			for _, want := range []string{roleName + " configuration from " + path, "OK: certificates load",
				filepath.Join(dir, "ca.crt"), "ca.crt beside the config file"} {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("config check does not say %q:\n%s", want, r.stdout)
				}
			}
			// The same file under the unit: the names resolve in $CREDENTIALS_DIRECTORY.
			creds := t.TempDir()
			for _, f := range []string{"ca.crt", roleName + ".crt", roleName + ".key"} {
				b, err := os.ReadFile(filepath.Join(dir, f))
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(creds, f), string(b))
			}
			elsewhere := filepath.Join(t.TempDir(), roleName+".yaml")
			writeFile(t, elsewhere, text)
			r = run(t, []string{"CREDENTIALS_DIRECTORY=" + creds}, bin, "config", "check", "--config", elsewhere)
			if r.code != 0 || !strings.Contains(r.stdout, filepath.Join(creds, roleName+".key")) {
				t.Fatalf("config check with $CREDENTIALS_DIRECTORY: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
		})
	}
}

// proc is a broker started in the background; its stderr is kept for failures.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr strings.Builder
	done   chan struct{}
}

func start(t *testing.T, env []string, bin string, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*runBound)
	p := &proc{cmd: exec.CommandContext(ctx, bin, args...), done: make(chan struct{})}
	p.cmd.Env = cleanEnv(env)
	p.cmd.Cancel = func() error { return p.cmd.Process.Kill() }
	p.cmd.WaitDelay = 5 * time.Second
	pipe, err := p.cmd.StderrPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() { // owned by p: ends when the process closes its stderr
		defer close(p.done)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			p.mu.Lock()
			fmt.Fprintln(&p.stderr, sc.Text())
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		<-p.done
		err := p.cmd.Wait()
		cancel()
		if err != nil && !t.Failed() {
			t.Errorf("%s %s after SIGINT: %v\n%s", bin, strings.Join(args, " "), err, p.log())
		}
	})
	return p
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// The shipped examples start a core and an edge with nothing but --config (each
// address rewritten to a free loopback port, the certificates the units'
// LoadCredential= names, for the edge in $CREDENTIALS_DIRECTORY as under systemd),
// and they carry a tunnel: the edge's /status says connected.
func TestExamplesCarryATunnel(t *testing.T) {
	bin := brokerBin(t)
	dir := t.TempDir()
	pki(t, bin, dir)

	coreListen := "127.0.0.1:" + freePort(t)
	coreYAML := readDeploy(t, "core.yaml")
	for k, v := range map[string]string{"listen": coreListen, "admin": "127.0.0.1:" + freePort(t),
		"master-pub-port": freePort(t), "master-ret-port": freePort(t)} {
		coreYAML = setKey(t, coreYAML, k, v)
	}
	corePath := filepath.Join(dir, "core.yaml")
	writeFile(t, corePath, coreYAML)

	edgeAdmin := "127.0.0.1:" + freePort(t)
	edgeYAML := readDeploy(t, "edge.yaml")
	for k, v := range map[string]string{"core": coreListen, "bind": "127.0.0.1", "pub-port": freePort(t),
		"ret-port": freePort(t), "admin": edgeAdmin, "state-dir": filepath.Join(t.TempDir(), "state")} {
		edgeYAML = setKey(t, edgeYAML, k, v)
	}
	edgePath := filepath.Join(t.TempDir(), "edge.yaml") // not beside the certificates: they come as credentials
	writeFile(t, edgePath, edgeYAML)

	core := start(t, nil, bin, "core", "--config", corePath)
	edge := start(t, []string{"CREDENTIALS_DIRECTORY=" + dir}, bin, "edge", "--config", edgePath)

	deadline := time.Now().Add(tunnelBound)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		st, err := status(edgeAdmin)
		if err == nil && st.Connected {
			return
		}
		last = fmt.Sprint(st, err)
		if time.Now().After(deadline) {
			t.Fatalf("edge not connected within %v (last status %s)\ncore:\n%s\nedge:\n%s", tunnelBound, last, core.log(), edge.log())
		}
		select {
		case <-tick.C:
		case <-edge.done:
			t.Fatalf("the edge exited:\n%s\ncore:\n%s", edge.log(), core.log())
		case <-core.done:
			t.Fatalf("the core exited:\n%s\nedge:\n%s", core.log(), edge.log())
		}
	}
}

type edgeStatus struct {
	Connected bool   `json:"connected"`
	LastError string `json:"last_error"`
}

func status(addr string) (edgeStatus, error) {
	var st edgeStatus
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// systemdAnalyze is where Debian's systemd package puts it.
const systemdAnalyze = "/usr/bin/systemd-analyze"

// exposureBound is the most `systemd-analyze security` may score a unit (0 is
// fully locked down, 10 not at all; systemd calls below 2 "OK"). The core scores a
// little more than the edge: it needs CAP_NET_BIND_SERVICE for :443.
const exposureBound = 2.0

// The units pass `systemd-analyze verify` (with ExecStart pointing at the binary
// just built: verify checks that it exists) and score at most exposureBound in
// `systemd-analyze security --offline=yes`; they hold what the deployment relies on.
func TestUnits(t *testing.T) {
	if _, err := os.Stat(systemdAnalyze); err != nil {
		// As root (CI) `make deps` installs it, so missing there is a failure;
		// without root it cannot have been installed for us.
		if os.Geteuid() == 0 {
			t.Fatalf("%s is missing: `make deps` installs Debian's systemd package as root", systemdAnalyze)
		}
		t.Skipf("%s is missing and installing it needs root: sudo apt-get install systemd", systemdAnalyze)
	}
	bin := brokerBin(t)
	dir := t.TempDir()
	for _, roleName := range []string{"edge", "core"} {
		t.Run(roleName, func(t *testing.T) {
			name := "salt-broker-" + roleName + ".service"
			unit := readDeploy(t, name)
			for _, want := range []string{
				"ExecStart=/usr/local/bin/broker " + roleName + " --config /etc/salt-broker/" + roleName + ".yaml\n",
				"ExecReload=/bin/kill -HUP $MAINPID\n",
				"LoadCredential=ca.crt:/etc/salt-broker/ca.crt\n",
				"LoadCredential=" + roleName + ".key:/etc/salt-broker/" + roleName + ".key\n",
				"LimitNOFILE=65536\n", "UMask=0077\n", "SystemCallFilter=@system-service\n",
				"ProtectClock=yes\n", "ProtectKernelLogs=yes\n", "ProtectHostname=yes\n",
				"ProtectProc=invisible\n", "RestrictRealtime=yes\n", "RestartPreventExitStatus=2\n",
			} {
				if !strings.Contains(unit, want) {
					t.Errorf("%s lacks %q", name, want)
				}
			}
			if roleName == "edge" && strings.Contains(unit, "CAP_NET_BIND_SERVICE") {
				t.Errorf("%s grants CAP_NET_BIND_SERVICE: 4505 and 4506 do not need it", name)
			}
			path := filepath.Join(dir, name)
			writeFile(t, path, strings.ReplaceAll(unit, "/usr/local/bin/broker", bin))
			if r := run(t, nil, systemdAnalyze, "verify", path); r.code != 0 || r.stderr != "" {
				t.Errorf("systemd-analyze verify %s: exit %d\n%s%s", name, r.code, r.stdout, r.stderr)
			}
			r := run(t, nil, systemdAnalyze, "security", "--offline=yes", "--no-pager", path)
			m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindStringSubmatch(r.stdout)
			if r.code != 0 || m == nil {
				t.Fatalf("systemd-analyze security %s: exit %d\n%s%s", name, r.code, r.stdout, r.stderr)
			}
			if score, _ := strconv.ParseFloat(m[1], 64); score > exposureBound {
				t.Errorf("%s: exposure %.1f, want at most %.1f:\n%s", name, score, exposureBound, r.stdout)
			}
		})
	}
}
