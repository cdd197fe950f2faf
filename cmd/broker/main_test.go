package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/salt-broker/salt-broker/internal/setting"
)

// runMainEnv set in a child's environment makes this test binary run main() with
// the child's arguments: the binary under test is built once, with the tests, from
// the same code.
const runMainEnv = "SALT_BROKER_CMD_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// exitBound bounds each run of the broker: every case here must end long before it
// (a bad setting is refused before anything starts). It is a bound, not a timing
// assertion.
const exitBound = 30 * time.Second

type result struct {
	stdout, stderr string
	code           int
}

// broker runs `broker args...` and waits for it to exit. env adds to an
// environment from which the operator's BROKER_* variables are removed.
func broker(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), exitBound)
	defer cancel()
	cmd := brokerCmd(ctx, env, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("broker %s did not exit within %v\nstderr:\n%s", strings.Join(args, " "), exitBound, stderr.String())
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("broker %s: %v", strings.Join(args, " "), err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

func brokerCmd(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BROKER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(append(cmd.Env, runMainEnv+"=1"), env...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// pki makes a CA and a core and an edge certificate with `broker certs`, and returns
// the --ca/--cert/--key flags of each.
func pki(t *testing.T) (coreTLS, edgeTLS []string) {
	t.Helper()
	dir := t.TempDir()
	for _, args := range [][]string{
		{"certs", "init", "--dir", dir},
		{"certs", "issue", "--dir", dir, "--name", "core", "--role", "core", "--host", "127.0.0.1"},
		{"certs", "issue", "--dir", dir, "--name", "edge", "--role", "edge"},
	} {
		if r := broker(t, nil, args...); r.code != 0 {
			t.Fatalf("broker %s: exit %d\n%s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	files := func(name string) []string {
		return []string{"--ca", filepath.Join(dir, "ca.crt"), "--cert", filepath.Join(dir, name+".crt"), "--key", filepath.Join(dir, name+".key")}
	}
	return files("core"), files("edge")
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

// checkOneLine asserts what an operator must see for a refused command line: exit
// code want, nothing on stdout (no usage dump), one line on stderr holding each of
// wants, and no panic.
func checkOneLine(t *testing.T, r result, code int, wants ...string) {
	t.Helper()
	if strings.Contains(r.stdout+r.stderr, "panic") || strings.Contains(r.stdout+r.stderr, "goroutine ") {
		t.Fatalf("panicked:\n%s%s", r.stdout, r.stderr)
	}
	if r.code != code {
		t.Errorf("exit code %d, want %d", r.code, code)
	}
	if r.stdout != "" {
		t.Errorf("stdout is not empty:\n%s", r.stdout)
	}
	line := strings.TrimSuffix(r.stderr, "\n")
	if line == "" || strings.Contains(line, "\n") {
		t.Fatalf("stderr is not one line:\n%s", r.stderr)
	}
	for _, w := range wants {
		if !strings.Contains(line, w) {
			t.Errorf("stderr %q does not say %q", line, w)
		}
	}
}

// Every numeric and duration flag of edge and core, with each kind of bad value,
// is refused at start with one line naming the flag and the value, exit code 2,
// and no panic (--max-in-flight -1 used to panic in makechan).
func TestBadSettingsAreRefused(t *testing.T) {
	coreTLS, edgeTLS := pki(t)
	coreBase := append([]string{"core", "--master", "127.0.0.1", "--listen", "127.0.0.1:0", "--admin", ""}, coreTLS...)
	// Should a bad value get through, the edge binds only loopback ports nobody uses.
	edgeBase := append([]string{"edge", "--core", "127.0.0.1:1", "--bind", "127.0.0.1",
		"--pub-port", freePort(t), "--ret-port", freePort(t), "--admin", ""}, edgeTLS...)

	const notInt, notDuration = "abc", "10" // a duration needs its unit
	bad := []struct {
		base   []string
		flag   string
		values []string
	}{
		{coreBase, "--master-pub-port", []string{"-1", "65536", notInt}},
		{coreBase, "--master-ret-port", []string{"-4506", "100000", notInt}},
		{coreBase, "--ring-count", []string{"-1", notInt}},
		{coreBase, "--ring-bytes", []string{"-1", "1000", notInt}}, // 1000: below --max-message-size
		{coreBase, "--ring-age", []string{"-1s", notDuration, notInt}},
		{coreBase, "--max-in-flight", []string{"-1", notInt, "99999999999999999999"}},
		{coreBase, "--drain-timeout", []string{"-1s", notDuration}},
		{coreBase, "--dedup-ttl", []string{"-1s", notDuration}},
		{coreBase, "--max-message-size", []string{"-1", "2147483648", notInt}},
		{coreBase, "--write-timeout", []string{"-1s", notDuration}},
		{coreBase, "--bulk-in-flight-bytes", []string{"-1", notInt}},

		{edgeBase, "--pub-port", []string{"-1", "65536", notInt}},
		{edgeBase, "--ret-port", []string{"-1", "65536", notInt}},
		{edgeBase, "--quic-probe-interval", []string{"-1s", notDuration}},
		{edgeBase, "--max-pending", []string{"-1", notInt}},
		{edgeBase, "--max-pending-bytes", []string{"-1", notInt}},
		{edgeBase, "--auth-max-age", []string{"-1s", notDuration}},
		{edgeBase, "--request-max-age", []string{"-2s", notDuration}},
		{edgeBase, "--retry-window", []string{"-1s", notDuration}},
		{edgeBase, "--retry-chain", []string{"-1", notInt}},
		{edgeBase, "--drain-timeout", []string{"-1s", notDuration}},
		{edgeBase, "--max-minions", []string{"-1", notInt}},
		{edgeBase, "--max-connections", []string{"-1", notInt}},
		{edgeBase, "--max-message-size", []string{"-1", "2147483648", notInt}},
	}
	// Every numeric and duration flag has its row: a new flag without one fails here.
	covered := map[string]bool{}
	for _, b := range bad {
		covered[b.base[0]+" "+b.flag] = true
	}
	for _, cmd := range []*cli.Command{coreCommand(), edgeCommand()} {
		for _, f := range cmd.Flags {
			switch f.(type) {
			case *cli.IntFlag, *cli.Int64Flag, *cli.UintFlag, *cli.Uint64Flag, *cli.DurationFlag, *cli.Float64Flag:
				if name := cmd.Name + " --" + f.Names()[0]; !covered[name] {
					t.Errorf("broker %s has no bad values in this test", name)
				}
			}
		}
	}

	for _, b := range bad {
		for _, v := range b.values {
			t.Run(b.base[0]+b.flag+"="+v, func(t *testing.T) {
				args := append(append([]string{}, b.base...), b.flag, v)
				r := broker(t, nil, args...)
				checkOneLine(t, r, exitUsage, b.flag+" "+v+":")
			})
		}
	}

	t.Run("environment", func(t *testing.T) {
		r := broker(t, []string{"BROKER_MAX_IN_FLIGHT=abc"}, coreBase...)
		checkOneLine(t, r, exitUsage, "BROKER_MAX_IN_FLIGHT=abc: want a whole number")
		r = broker(t, []string{"BROKER_RING_COUNT=-1"}, coreBase...)
		checkOneLine(t, r, exitUsage, "--ring-count -1:", "(from $BROKER_RING_COUNT)")
	})
	t.Run("config file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "edge.yaml")
		if err := os.WriteFile(path, []byte("max-pending: -1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		checkOneLine(t, broker(t, nil, append(edgeBase, "--config", path)...), exitUsage, "--max-pending -1:", "line 1")
		if err := os.WriteFile(path, []byte("retry-chain: many\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		checkOneLine(t, broker(t, nil, append(edgeBase, "--config", path)...), exitUsage, `retry-chain: "many" is a string; want a whole number`, path)
	})
}

// A command line urfave/cli cannot parse is one line too, not 40 lines of help.
func TestUsageErrorsAreOneLine(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		wants []string
	}{
		{[]string{"core", "--master", "x", "--bogus"}, []string{"unknown flag --bogus"}},
		{[]string{"edge", "--core", "x:1", "--max-pending"}, []string{"--max-pending needs a value"}},
		{[]string{"core", "--ca", "a", "--cert", "b", "--key", "c"}, []string{"missing required setting master (--master, $BROKER_MASTER"}},
		{[]string{"edge", "--core", "x:1"}, []string{"missing required settings ca (--ca", "cert (--cert", "key (--key, $BROKER_KEY"}},
		{[]string{"certs", "issue", "--dir", "/nonexistent", "--role", "edge"}, []string{"--name is required"}},
		{[]string{"--log-level", "loud", "core"}, []string{"--log-level", "loud"}},
		{[]string{"nosuch"}, []string{`unknown command "nosuch"`}},
		{[]string{"certs", "nosuch"}, []string{`unknown command "nosuch"`}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			checkOneLine(t, broker(t, nil, tc.args...), exitUsage, tc.wants...)
		})
	}
}

// The base command lines of TestBadSettingsAreRefused start, and a 0 in each
// numeric setting means its default (or "off"/"stop at once" where the flag says so):
// so the refusals above come from the bad values, not from the rest of the line.
// The core takes its --master from --config: a required flag given only there used
// to be refused before the file was read.
func TestGoodSettingsStart(t *testing.T) {
	coreTLS, edgeTLS := pki(t)
	cfg := filepath.Join(t.TempDir(), "core.yaml")
	if err := os.WriteFile(cfg, []byte("master: 127.0.0.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	zero := func(flags ...string) []string {
		var out []string
		for _, f := range flags {
			out = append(out, f, "0")
		}
		return out
	}
	for _, tc := range []struct {
		args    []string
		started string
	}{
		{append(append([]string{"core", "--config", cfg, "--listen", "127.0.0.1:0", "--admin", ""}, coreTLS...),
			zero("--master-pub-port", "--master-ret-port", "--ring-count", "--ring-bytes", "--ring-age", "--max-in-flight",
				"--drain-timeout", "--dedup-ttl", "--max-message-size", "--write-timeout", "--bulk-in-flight-bytes")...), "core started"},
		{append(append([]string{"edge", "--core", "127.0.0.1:1", "--bind", "127.0.0.1", "--pub-port", freePort(t),
			"--ret-port", freePort(t), "--admin", ""}, edgeTLS...),
			zero("--quic-probe-interval", "--max-pending", "--max-pending-bytes", "--auth-max-age", "--request-max-age", "--retry-window",
				"--retry-chain", "--drain-timeout", "--max-minions", "--max-connections", "--max-message-size")...), "edge started"},
	} {
		t.Run(tc.args[0], func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), exitBound)
			defer cancel()
			cmd := brokerCmd(ctx, nil, tc.args...)
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var log strings.Builder
			sc := bufio.NewScanner(stderr)
			started := false
			for !started && sc.Scan() {
				fmt.Fprintln(&log, sc.Text())
				started = strings.Contains(sc.Text(), tc.started)
			}
			if started {
				if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
			}
			for sc.Scan() { // until it exits (or exitBound kills it)
				fmt.Fprintln(&log, sc.Text())
			}
			err = cmd.Wait()
			if !started {
				t.Fatalf("no %q before it exited (%v):\n%s", tc.started, err, log.String())
			}
			if err != nil || ctx.Err() != nil {
				t.Fatalf("after SIGTERM: %v (%v)\n%s", err, ctx.Err(), log.String())
			}
		})
	}
}

// `broker status` fails, with one line and exit code 1, when the admin address
// answers anything but 2xx or does not answer; it used to print a 404's body and
// exit 0.
func TestStatusFailsOnHTTPErrors(t *testing.T) {
	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, `{"role":"edge","connected":true}`)
	}))
	defer ok.Close()
	down := net.JoinHostPort("127.0.0.1", freePort(t))
	host := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

	r := broker(t, nil, "status", "--admin", host(notFound))
	checkOneLine(t, r, exitFailure, "404", host(notFound))

	r = broker(t, nil, "status", "--admin", down)
	checkOneLine(t, r, exitFailure, down)

	r = broker(t, nil, "status", "--json", "--admin", host(ok))
	if r.code != 0 || r.stdout != "{\"role\":\"edge\",\"connected\":true}\n" {
		t.Fatalf("status of a healthy endpoint: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("bind: address in use"), exitFailure},
		{fmt.Errorf("wrapped: %w", usagef("bad")), exitUsage},
		{fmt.Errorf("core: %w", &setting.Error{Name: "--ring-count", Value: "-1", Rule: "must be at least 1"}), exitUsage},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
