package harness

import (
	"context"
	"fmt"
	"io"
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

// Files returns the --ca/--cert/--key flags for a certificate name.
func (p PKI) Files(name string) []string {
	return []string{"--ca", filepath.Join(p.Dir, "ca.crt"), "--cert", filepath.Join(p.Dir, name+".crt"), "--key", filepath.Join(p.Dir, name+".key")}
}

// BrokerProc is a running `broker core` or `broker edge`.
type BrokerProc struct {
	*Proc
	Admin string // host:port of its admin endpoint
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
	resp, err := http.DefaultClient.Do(req)
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
	p.CoreAddr = o.CoreIP + ":" + strconv.Itoa(FreeUDPPort(t, o.CoreIP))
	p.EdgePub, p.EdgeRet = FreePort(t, o.EdgeIP), FreePort(t, o.EdgeIP)
	p.coreArgs = append(append([]string{"core", "--master", o.MasterIP, "--master-pub-port", strconv.Itoa(o.MasterPubPort),
		"--master-ret-port", strconv.Itoa(o.RetPort), "--listen", p.CoreAddr}, p.PKI.Files("core")...), o.CoreArgs...)
	dial := p.CoreAddr
	if o.Via != nil {
		dial = o.Via(p.CoreAddr)
	}
	p.edgeArgs = append(append([]string{"edge", "--core", dial, "--bind", o.EdgeIP, "--pub-port", strconv.Itoa(p.EdgePub),
		"--ret-port", strconv.Itoa(p.EdgeRet)}, p.PKI.Files("edge")...), o.EdgeArgs...)
	p.StartCore(t)
	p.StartEdge(t)
	return p
}

// StartCore (re)starts the core with the same arguments.
func (p *Pair) StartCore(t testing.TB) {
	p.Core = StartBroker(t, "core", p.opts.CoreWrap, p.coreArgs...)
}

// StartEdge (re)starts the edge with the same arguments.
func (p *Pair) StartEdge(t testing.TB) {
	p.Edge = StartBroker(t, "edge", p.opts.EdgeWrap, p.edgeArgs...)
}
