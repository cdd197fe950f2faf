package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// PKI is a CA with one core and one edge certificate, made by `broker certs`.
type PKI struct{ Dir string }

// NewPKI runs `broker certs init` and issues "core" (for hosts) and "edge".
func NewPKI(t testing.TB, hosts ...string) PKI {
	t.Helper()
	bin := BuildBroker(t)
	dir := t.TempDir()
	run := func(args ...string) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("broker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("certs", "init", "--dir", dir)
	run("certs", "issue", "--dir", dir, "--name", "core", "--role", "core", "--host", strings.Join(hosts, ","))
	run("certs", "issue", "--dir", dir, "--name", "edge", "--role", "edge")
	return PKI{Dir: dir}
}

// Issue makes one more certificate from the same CA (a second edge, say).
func (p PKI) Issue(t testing.TB, name, role string) {
	t.Helper()
	out, err := exec.Command(BuildBroker(t), "certs", "issue", "--dir", p.Dir, "--name", name, "--role", role).CombinedOutput()
	if err != nil {
		t.Fatalf("broker certs issue %s: %v\n%s", name, err, out)
	}
}

// Files returns the --ca/--cert/--key flags for a certificate name.
func (p PKI) Files(name string) []string {
	return []string{"--ca", filepath.Join(p.Dir, "ca.crt"), "--cert", filepath.Join(p.Dir, name+".crt"), "--key", filepath.Join(p.Dir, name+".key")}
}

// BrokerProc is a running `broker core` or `broker edge`.
type BrokerProc struct {
	*Proc
	Admin string // host:port of its admin endpoint
	NS    string // network namespace it runs in ("" = this one)
}

// StartBroker starts `broker <args>` with an admin endpoint on a free loopback port.
func StartBroker(t testing.TB, name string, wrap func(*exec.Cmd) *exec.Cmd, args ...string) *BrokerProc {
	t.Helper()
	admin := "127.0.0.1:" + strconv.Itoa(FreePort(t, "127.0.0.1"))
	full := append([]string{"--log-level", "debug"}, args...)
	full = append(full, "--admin", admin)
	cmd := exec.Command(BuildBroker(t), full...)
	if wrap != nil {
		cmd = wrap(cmd)
	}
	b := &BrokerProc{Proc: Start(t, name, cmd), Admin: admin}
	t.Cleanup(func() {
		if strings.Contains(b.Stderr(), "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race:\n%s", name, b.Stderr())
		}
	})
	return b
}

// Get fetches a path of the admin endpoint.
func (b *BrokerProc) Get(path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.Admin+path, nil)
	client := http.DefaultClient
	if b.NS != "" {
		client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return dialInNS(ctx, b.NS, addr) }}}
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// WaitReady polls /readyz until it answers 200.
func (b *BrokerProc) WaitReady(ctx context.Context) error {
	for {
		if code, _, err := b.Get("/readyz"); err == nil && code == http.StatusOK {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w\n%s", b.Name, ctx.Err(), b.Stderr())
		case <-b.Done():
			return fmt.Errorf("%s exited: %v\n%s", b.Name, b.ExitErr(), b.Stderr())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Metric returns the sum of a metric's samples whose line contains every filter.
func (b *BrokerProc) Metric(name string, filters ...string) (float64, error) {
	_, body, err := b.Get("/metrics")
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, f := range filters {
			ok = ok && strings.Contains(line, f)
		}
		if !ok {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum, nil
}

// PairOpts places a core and an edge.
type PairOpts struct {
	MasterIP               string // default 127.0.0.1
	MasterPubPort, RetPort int
	CoreIP                 string // default 127.0.0.1
	EdgeIP                 string // where minions connect; default 127.0.0.2
	CoreArgs, EdgeArgs     []string
	// Via, when set, returns the address the edge dials instead of the core's own
	// (an impairment proxy in front of the core).
	Via                func(coreAddr string) string
	CoreWrap, EdgeWrap func(*exec.Cmd) *exec.Cmd
	CoreNS, EdgeNS     string // the namespaces the wraps enter, for the admin endpoints
}

// Pair is a running core and edge.
type Pair struct {
	PKI                PKI
	Core, Edge         *BrokerProc
	CoreAddr           string
	EdgePub, EdgeRet   int
	EdgeIP             string
	coreArgs, edgeArgs []string
	opts               PairOpts
}

// StartPair starts a core and an edge and waits until the edge is connected.
func StartPair(t testing.TB, o PairOpts) *Pair {
	t.Helper()
	p := StartPairNoWait(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Edge.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return p
}

// StartPairNoWait starts a core and an edge without waiting for the edge to connect.
func StartPairNoWait(t testing.TB, o PairOpts) *Pair {
	t.Helper()
	if o.MasterIP == "" {
		o.MasterIP = "127.0.0.1"
	}
	if o.CoreIP == "" {
		o.CoreIP = "127.0.0.1"
	}
	if o.EdgeIP == "" {
		o.EdgeIP = "127.0.0.2"
	}
	p := &Pair{PKI: NewPKI(t, o.CoreIP), EdgeIP: o.EdgeIP, opts: o}
	// The core binds a free port itself (UDP and TCP must both be free: picking one
	// here and binding it there races with parallel tests) and logs it.
	p.coreArgs = append(append([]string{"core", "--master", o.MasterIP, "--master-pub-port", strconv.Itoa(o.MasterPubPort),
		"--master-ret-port", strconv.Itoa(o.RetPort), "--listen", o.CoreIP + ":0"}, p.PKI.Files("core")...), o.CoreArgs...)
	p.StartCore(t)
	p.CoreAddr = p.Core.logged(t, "core started", "listen_udp=")
	for i, a := range p.coreArgs {
		if a == o.CoreIP+":0" {
			p.coreArgs[i] = p.CoreAddr // a restarted core comes back on the same port
		}
	}
	// Edge ports are picked on this namespace's loopback when the edge runs in another.
	edgePick := o.EdgeIP
	if o.EdgeNS != "" {
		edgePick = "127.0.0.1"
	}
	p.EdgePub, p.EdgeRet = FreePort(t, edgePick), FreePort(t, edgePick)
	dial := p.CoreAddr
	if o.Via != nil {
		dial = o.Via(p.CoreAddr)
	}
	p.edgeArgs = append(append([]string{"edge", "--core", dial, "--bind", o.EdgeIP, "--pub-port", strconv.Itoa(p.EdgePub),
		"--ret-port", strconv.Itoa(p.EdgeRet)}, p.PKI.Files("edge")...), o.EdgeArgs...)
	p.StartEdge(t)
	return p
}

// logged waits for a log line containing msg and returns the value of its key= field.
func (b *BrokerProc) logged(t testing.TB, msg, key string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(b.Stderr(), "\n") {
			if !strings.Contains(line, msg) {
				continue
			}
			for _, f := range strings.Fields(line) {
				if strings.HasPrefix(f, key) {
					return strings.TrimPrefix(f, key)
				}
			}
		}
		select {
		case <-b.Done():
			t.Fatalf("%s exited: %v\n%s", b.Name, b.ExitErr(), b.Stderr())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%s did not log %q", b.Name, msg)
	return ""
}

// StartCore (re)starts the core with the same arguments.
func (p *Pair) StartCore(t testing.TB) {
	p.Core = StartBroker(t, "core", p.opts.CoreWrap, p.coreArgs...)
	p.Core.NS = p.opts.CoreNS
}

// StartEdge (re)starts the edge with the same arguments.
func (p *Pair) StartEdge(t testing.TB) {
	p.Edge = StartBroker(t, "edge", p.opts.EdgeWrap, p.edgeArgs...)
	p.Edge.NS = p.opts.EdgeNS
}
