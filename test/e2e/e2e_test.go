// Package e2e runs the broker pair between real libzmq peers (Debian's python3-zmq)
// playing a Salt master and its minions, on loopback: the edge on 127.0.0.2, the
// master and the core on 127.0.0.1.
package e2e

import (
	"context"
	"crypto/tls"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

type setup struct {
	master *harness.Master
	pair   *harness.Pair
}

func startAll(t *testing.T, o harness.PairOpts) setup {
	m := harness.StartMaster(t, harness.MasterOpts{})
	o.MasterPubPort, o.RetPort = m.PubPort, m.RetPort
	return setup{master: m, pair: harness.StartPair(t, o)}
}

func (s setup) minions(t *testing.T, o harness.MinionOpts) *harness.Minions {
	o.Master, o.PubPort, o.RetPort = s.pair.EdgeIP, s.pair.EdgePub, s.pair.EdgeRet
	return harness.StartMinions(t, o)
}

// Every minion receives every publication, in order, multipart intact; minions
// with zmq_filtering get exactly broadcast plus their own topic.
func TestPublicationsReachEveryMinionInOrder(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	s := startAll(t, harness.PairOpts{})
	all := s.minions(t, harness.MinionOpts{Count: 24, IDPrefix: "all"})
	filtered := s.minions(t, harness.MinionOpts{Count: 6, IDPrefix: "flt", Filtering: true})
	if err := harness.WarmUp(ctx, s.master, all, filtered); err != nil {
		t.Fatal(err)
	}
	for _, g := range []*harness.Minions{all, filtered} {
		if err := g.ResetStats(ctx); err != nil {
			t.Fatal(err)
		}
	}
	const single, multi = 400, 600
	if _, err := s.master.Publish(ctx, harness.PublishOpts{Count: single, Rate: 2000, Size: 463}); err != nil {
		t.Fatal(err)
	}
	topics := []string{"broadcast"}
	for i := 0; i < 5; i++ { // one topic per filtered minion 0..4; flt5 gets broadcast only
		topics = append(topics, harness.TopicFor(filtered.ID(i)))
	}
	if _, err := s.master.Publish(ctx, harness.PublishOpts{Count: multi, Rate: 2000, Size: 463, Topics: topics}); err != nil {
		t.Fatal(err)
	}
	perTopic := multi / len(topics)
	waitFor(t, ctx, "every minion to have every publication", func() (bool, string) {
		st, err := all.BriefStats(ctx)
		if err != nil {
			return false, err.Error()
		}
		return st.Pubs == int64(24*(single+multi)), "pubs " + strconv.FormatInt(st.Pubs, 10)
	})
	st, err := all.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st.PerMinion {
		if m.Pubs != single+multi || m.Missing != 0 || m.OutOfOrder != 0 || m.Dup != 0 || m.BadMultipart != 0 {
			t.Errorf("%s: %+v", m.ID, m)
		}
	}
	fs, err := filtered.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range fs.PerMinion {
		want := int64(perTopic) // broadcast
		if i < 5 {
			want += int64(perTopic)
		}
		if m.Pubs != want || m.Foreign != 0 || m.OutOfOrder != 0 || m.BadMultipart != 0 {
			t.Errorf("%s (filtering): want %d pubs, got %+v", m.ID, want, m)
		}
	}
}

// 200 minions issue concurrent requests; each gets its own reply, for reply sizes
// from 0 B to 8 MiB, and the master sees the direct envelope plus one routing frame.
func TestRequestsFrom200Minions(t *testing.T) {
	// A bound, not a timing: the run takes 3.5 min alone on 2 cores with -race
	// (1.6 GB of 8 MiB replies), and CI runs the fault tests beside it.
	ctx := ctxFor(t, 8*time.Minute)
	s := startAll(t, harness.PairOpts{})
	mins := s.minions(t, harness.MinionOpts{Count: 200, IDPrefix: "req"})
	total := 0
	for _, c := range []harness.RequestOpts{
		{Count: 3, Size: 500, ReplySize: 0},
		{Count: 3, Size: 500, ReplySize: 99},
		{Count: 2, Size: 4500, ReplySize: 64 << 10},
		{Count: 1, Size: 500, ReplySize: 1 << 20, Concurrency: 50, Timeout: 30 * time.Second},
		{Count: 1, Size: 500, ReplySize: 8 << 20, Concurrency: 16, Timeout: 60 * time.Second},
		{Count: 2, Kind: "auth", ReplySize: 1602},
	} {
		res, err := mins.Request(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		total += res.Total
		if res.OK != res.Total || res.WrongReply != 0 || res.Retried != 0 {
			t.Errorf("reply size %d: %+v", c.ReplySize, res)
		}
	}
	ms, err := s.master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ms.DupRIDs != 0 || ms.Bad != 0 || int(ms.Requests) != total {
		t.Errorf("master saw %d requests (want %d), %d duplicates, %d bad", ms.Requests, total, ms.DupRIDs, ms.Bad)
	}
	if len(ms.Depth) != 1 || ms.Depth[2] != ms.Requests {
		t.Errorf("envelope depth at the master: %v (want every request at depth 2: the direct 1 plus our routing frame)", ms.Depth)
	}
}

// Garbage and half greetings on the minion ports close that peer only, with a log
// line; an oversized request is refused and counted; the other minions keep working.
func TestBadInputClosesOnlyThatPeer(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	s := startAll(t, harness.PairOpts{EdgeArgs: []string{"--max-message-size", strconv.Itoa(1 << 20)}})
	mins := s.minions(t, harness.MinionOpts{Count: 20, IDPrefix: "ok"})
	edgeIP := s.pair.EdgeIP
	hostile := []struct {
		port  int
		bytes []byte
	}{
		{s.pair.EdgePub, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{s.pair.EdgeRet, []byte("\x00\x01garbage garbage garbage garbage garbage garbage garbage garbage")},
		{s.pair.EdgeRet, []byte{0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3}}, // half a greeting, then silence
		{s.pair.EdgeRet, append(append(greetingREQ(), readyREQ()...), 0x02, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)},
	}
	var conns []net.Conn
	for _, h := range hostile {
		c, err := net.Dial("tcp", net.JoinHostPort(edgeIP, strconv.Itoa(h.port)))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		_, _ = c.Write(h.bytes)
	}
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	res, err := mins.Request(ctx, harness.RequestOpts{Count: 20, Size: 500, ReplySize: 99})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != res.Total {
		t.Errorf("well-behaved minions under attack: %+v", res)
	}
	// An oversized request closes that minion's connection; it retries and fails, as
	// it would against a master that refuses it, and the rest carry on.
	big := s.minions(t, harness.MinionOpts{Count: 1, IDPrefix: "big"})
	res, err = big.Request(ctx, harness.RequestOpts{Count: 1, Size: 2 << 20, ReplySize: 10, Tries: 1, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 0 {
		t.Errorf("oversized request was answered: %+v", res)
	}
	if n, err := s.pair.Edge.Metric("salt_broker_edge_zmtp_drops_total", `cause="too_big"`); err != nil || n < 1 {
		t.Errorf("too_big drops %v (err %v)", n, err)
	}
	res, err = mins.Request(ctx, harness.RequestOpts{Count: 5, Size: 500, ReplySize: 99})
	if err != nil || res.OK != res.Total {
		t.Errorf("after the oversized request: %+v %v", res, err)
	}
	waitFor(t, ctx, "handshake failures to be counted", func() (bool, string) {
		n, _ := s.pair.Edge.Metric("salt_broker_edge_zmtp_handshake_failures_total", `cause="bad_greeting"`)
		return n >= 2, "bad_greeting " + strconv.FormatFloat(n, 'f', 0, 64)
	})
	for _, want := range []string{"ZeroMQ handshake failed", "over the maximum size"} {
		if !strings.Contains(s.pair.Edge.Stderr(), want) {
			t.Errorf("edge log lacks %q", want)
		}
	}
}

// The core refuses an edge whose certificate another CA signed, and a plain TLS
// client, each with a clear log line.
func TestCoreRefusesStrangers(t *testing.T) {
	ctx := ctxFor(t, time.Minute)
	s := startAll(t, harness.PairOpts{})
	other := harness.NewPKI(t, "127.0.0.1")
	port := harness.FreePort(t, "127.0.0.3")
	args := []string{"edge", "--core", s.pair.CoreAddr, "--bind", "127.0.0.3", "--pub-port", strconv.Itoa(port),
		"--ret-port", strconv.Itoa(harness.FreePort(t, "127.0.0.3")),
		"--ca", filepath.Join(s.pair.PKI.Dir, "ca.crt"),
		"--cert", filepath.Join(other.Dir, "edge.crt"), "--key", filepath.Join(other.Dir, "edge.key")}
	stranger := harness.StartBroker(t, "stranger-edge", nil, args...)
	waitFor(t, ctx, "the core to log the refusal", func() (bool, string) {
		return strings.Contains(s.pair.Core.Stderr(), "edge refused"), "no log line yet"
	})
	if code, _, _ := stranger.Get("/readyz"); code == 200 {
		t.Error("an edge with a foreign certificate became ready")
	}

	// A TLS client without a certificate, on the TCP port.
	tc, err := tls.Dial("tcp", s.pair.CoreAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"salt-broker/1"}})
	if err == nil {
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = tc.Read(make([]byte, 1))
		_ = tc.Close()
	}
	if err == nil {
		t.Error("a TLS client without a certificate was served")
	}
	waitFor(t, ctx, "the core to log the TLS refusal", func() (bool, string) {
		return strings.Contains(s.pair.Core.Stderr(), "tcp peer refused"), "no log line yet"
	})
	// The real edge is unaffected.
	mins := s.minions(t, harness.MinionOpts{Count: 3, IDPrefix: "ok"})
	if res, err := mins.Request(ctx, harness.RequestOpts{Count: 5, ReplySize: 99}); err != nil || res.OK != res.Total {
		t.Errorf("requests after refusals: %+v %v", res, err)
	}
}

// `broker demo` runs and exits 0.
func TestDemo(t *testing.T) {
	out, err := exec.Command(harness.BuildBroker(t), "demo").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK: every publication") {
		t.Fatalf("demo: %v\n%s", err, out)
	}
}

func waitFor(t *testing.T, ctx context.Context, what string, cond func() (bool, string)) {
	t.Helper()
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s (%s)", what, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// greetingREQ and readyREQ are what a libzmq REQ socket sends first.
func greetingREQ() []byte {
	g := make([]byte, 64)
	g[0], g[9], g[10], g[11] = 0xff, 0x7f, 3, 0
	copy(g[12:], "NULL")
	return g
}

func readyREQ() []byte {
	body := append([]byte{5}, "READY"...)
	body = append(body, 11)
	body = append(body, "Socket-Type"...)
	body = append(body, 0, 0, 0, 3)
	body = append(body, "REQ"...)
	return append([]byte{0x04, byte(len(body))}, body...)
}

// A publication or reply from the master over the core's maximum is dropped and
// counted — never buffered, never retried in a loop — and traffic goes on.
func TestOversizeFromMasterIsDroppedAndCounted(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	s := startAll(t, harness.PairOpts{CoreArgs: []string{"--max-message-size", strconv.Itoa(1 << 20)}})
	mins := s.minions(t, harness.MinionOpts{Count: 3, IDPrefix: "os"})
	if err := harness.WarmUp(ctx, s.master, mins); err != nil {
		t.Fatal(err)
	}
	_ = mins.ResetStats(ctx)
	if _, err := s.master.Publish(ctx, harness.PublishOpts{Count: 1, Size: 2 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.master.Publish(ctx, harness.PublishOpts{Count: 20, Size: 500}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the small publications after the oversized one", func() (bool, string) {
		st, err := mins.BriefStats(ctx)
		if err != nil {
			return false, err.Error()
		}
		return st.Pubs == 3*20, strconv.FormatInt(st.Pubs, 10)
	})
	res, err := mins.Request(ctx, harness.RequestOpts{Count: 1, Size: 500, ReplySize: 2 << 20, Tries: 1, Timeout: 5 * time.Second})
	if err != nil || res.OK != 0 {
		t.Errorf("oversized reply: %+v %v", res, err)
	}
	res, err = mins.Request(ctx, harness.RequestOpts{Count: 5, Size: 500, ReplySize: 99})
	if err != nil || res.OK != res.Total {
		t.Errorf("after the oversized reply: %+v %v", res, err)
	}
	for kind, want := range map[string]float64{"publication": 1, "reply": 3} {
		if n, _ := s.pair.Core.Metric("salt_broker_core_oversize_total", `kind="`+kind+`"`); n != want {
			t.Errorf("core oversize %s = %v, want %v", kind, n, want)
		}
	}
	if n, _ := s.pair.Edge.Metric("salt_broker_edge_tunnel_reconnects_total"); n != 0 {
		t.Errorf("the edge reconnected %v times", n)
	}
}

// The core keeps at most --max-in-flight requests at the master: a burst drains at
// the master's pace instead of landing on it at once (DESIGN invariant 4).
func TestCorePacesTheMaster(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	s := startAll(t, harness.PairOpts{CoreArgs: []string{"--max-in-flight", "2"}})
	mins := s.minions(t, harness.MinionOpts{Count: 10, IDPrefix: "pace"})
	if err := s.master.SetReplyPolicy(ctx, harness.ReplyPolicy{Delay: 500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := mins.Request(ctx, harness.RequestOpts{Count: 1, Size: 500, ReplySize: 99, Timeout: 30 * time.Second})
	if err != nil || res.OK != 10 {
		t.Fatalf("paced requests: %+v %v", res, err)
	}
	// 10 requests, each held 0.5 s by the master, at most 2 at a time: ≥ 2.5 s.
	if took := time.Since(start); took < 2400*time.Millisecond {
		t.Errorf("10 × 0.5 s requests finished in %s: more than 2 were at the master at once", took)
	}
}
