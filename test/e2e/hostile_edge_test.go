package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/test/harness"
	"github.com/salt-broker/salt-broker/tunnel"
)

// rogue is a peer holding a valid edge certificate of the core's CA — its own, not
// the real edge's — that talks to the core over the real wire (DESIGN §3 invariants
// 7 and 8: it may misbehave, and the core and every other edge must not notice).
type rogue struct {
	t    *testing.T
	addr string
	tls  tunnel.Config
}

func newRogue(t *testing.T, s setup, name string) rogue {
	s.pair.PKI.Issue(t, name, "edge")
	dir := s.pair.PKI.Dir
	tlsCfg, err := certs.LoadClient(filepath.Join(dir, "ca.crt"), filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return rogue{t: t, addr: s.pair.CoreAddr, tls: tunnel.Config{TLS: tlsCfg}}
}

func (r rogue) dial(ctx context.Context, mode tunnel.Mode) tunnel.Session {
	r.t.Helper()
	sess, err := tunnel.Dial(ctx, r.addr, r.tls, tunnel.DialOptions{Mode: mode})
	if err != nil {
		r.t.Fatalf("%v: dial the core: %v", mode, err)
	}
	return sess
}

// hello opens a control stream, says hello with session, and returns the stream and
// the core's answer (THelloAck or TReject, or an error when the core closed it).
func hello(ctx context.Context, sess tunnel.Session, session uint64) (tunnel.Stream, wire.Type, []byte, error) {
	st, err := sess.OpenStream(ctx)
	if err != nil {
		return nil, 0, nil, err
	}
	h := wire.Hello{Version: wire.Version, EdgeName: "rogue", EdgeSession: session}
	if err := wire.Write(st, wire.THello, h.Encode()); err != nil {
		return st, 0, nil, err
	}
	_ = st.SetReadDeadline(time.Now().Add(15 * time.Second))
	typ, body, err := wire.NewReader(st, 1<<10).Next()
	return st, typ, body, err
}

// protocolErrors reads the core's protocol error counter of one kind.
func protocolErrors(t *testing.T, s setup, kind string) float64 {
	t.Helper()
	n, err := s.pair.Core.Metric("salt_broker_core_tunnel_protocol_errors_total", `kind="`+kind+`"`)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// realEdgeUnharmed checks, from the simulated master's and minions' own records,
// that the real edge's minions are answered exactly once, and that the real edge
// kept its one connection.
func realEdgeUnharmed(ctx context.Context, t *testing.T, s setup, mins *harness.Minions) {
	t.Helper()
	res, err := mins.Request(ctx, harness.RequestOpts{Count: 5, Size: 500, ReplySize: 99})
	if err != nil || res.OK != res.Total {
		t.Errorf("the real edge's minions after the rogue peer: %+v %v", res, err)
	}
	if st, _ := s.master.Stats(ctx); st.DupRIDs != 0 {
		t.Errorf("%d duplicated requests at the master", st.DupRIDs)
	}
	if n, _ := s.pair.Edge.Metric("salt_broker_edge_tunnel_reconnects_total"); n != 0 {
		t.Errorf("the real edge lost its connection %v times while the rogue peer ran", n)
	}
	coreAlive(t, s)
}

func coreAlive(t *testing.T, s setup) {
	t.Helper()
	select {
	case <-s.pair.Core.Done():
		t.Fatalf("the core died: %v\n%s", s.pair.Core.ExitErr(), s.pair.Core.Stderr())
	default:
	}
}

// Each kind of bad stream is closed, logged and counted under its own kind; the
// peer's other streams, and the real edge with its minions, carry on.
func TestTrustedEdgeSpeakingNonsense(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	s := startAll(t, harness.PairOpts{})
	mins := s.minions(t, harness.MinionOpts{Count: 10, IDPrefix: "ok"})
	r := newRogue(t, s, "rogue")

	cases := []struct {
		kind string
		rec  []byte
	}{
		{"unexpected_record", wire.Append(nil, wire.Type(0xEE), []byte("not a record type"))},
		{"unexpected_record", wire.Append(nil, wire.TPong, nil)}, // a control record opening a stream
		{"bad_request", wire.Append(nil, wire.TRequest, []byte{1, 2, 3})},
		{"bad_subscribe", wire.Append(nil, wire.TSubscribe, []byte("garbage"))},
		{"bad_cancel", wire.Append(nil, wire.TCancel, []byte{9})},
		{"second_hello", wire.Append(nil, wire.THello, wire.Hello{Version: wire.Version, EdgeName: "again", EdgeSession: 1}.Encode())},
	}
	want := map[string]float64{}
	for _, mode := range []tunnel.Mode{tunnel.ModeQUIC, tunnel.ModeTCP} {
		sess := r.dial(ctx, mode)
		ctl, typ, _, err := hello(ctx, sess, wire.RandomID())
		if err != nil || typ != wire.THelloAck {
			t.Fatalf("%v: hello: %v %v", mode, typ, err)
		}
		for _, c := range cases {
			before := protocolErrors(t, s, c.kind)
			st, err := sess.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = st.Write(c.rec)
			_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, _, err := wire.NewReader(st, 1<<10).Next(); err == nil {
				t.Errorf("%v %s: the core answered a bad stream instead of closing it", mode, c.kind)
			}
			_ = st.Close()
			waitFor(t, ctx, string(mode)+" "+c.kind+" counted", func() (bool, string) {
				n := protocolErrors(t, s, c.kind)
				return n == before+1, fmt.Sprintf("%s %v, was %v", c.kind, n, before)
			})
			want[c.kind]++
		}
		// The peer's control stream still answers: only the bad streams were closed.
		if err := wire.Write(ctl, wire.TPing, wire.U64Body(7)); err != nil {
			t.Fatal(err)
		}
		if _, err := wire.NewReader(ctl, 1<<10).Expect(wire.TPong); err != nil {
			t.Errorf("%v: the rogue peer's control stream died with its bad streams: %v", mode, err)
		}
		// Garbage after a valid hello ends the control stream, counted.
		before := protocolErrors(t, s, "bad_control")
		_, _ = ctl.Write(wire.Append(nil, wire.TRequest, []byte("not on the control stream")))
		waitFor(t, ctx, string(mode)+" bad_control counted", func() (bool, string) {
			n := protocolErrors(t, s, "bad_control")
			return n == before+1, fmt.Sprintf("bad_control %v, was %v", n, before)
		})
		want["bad_control"]++
		_ = sess.CloseWithError("done")
	}
	// A malformed hello ends that connection, counted.
	sess := r.dial(ctx, tunnel.ModeQUIC)
	ctl, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = ctl.Write(wire.Append(nil, wire.THello, []byte{1, 2}))
	_ = ctl.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := wire.NewReader(ctl, 1<<10).Next(); err == nil {
		t.Error("the core answered a malformed hello")
	}
	want["bad_hello"]++
	waitFor(t, ctx, "bad_hello counted", func() (bool, string) {
		n := protocolErrors(t, s, "bad_hello")
		return n == want["bad_hello"], fmt.Sprintf("bad_hello %v", n)
	})
	_ = sess.CloseWithError("done")

	// A stream before any hello waits for one, then is closed and counted.
	sess = r.dial(ctx, tunnel.ModeQUIC)
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = st.Write(wire.Append(nil, wire.TCancel, wire.U64Body(1)))
	_ = st.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, _, err := wire.NewReader(st, 1<<10).Next(); err == nil {
		t.Error("the core answered a cancel on a connection that never said hello")
	}
	want["before_hello"]++
	waitFor(t, ctx, "before_hello counted", func() (bool, string) {
		n := protocolErrors(t, s, "before_hello")
		return n == want["before_hello"], fmt.Sprintf("before_hello %v", n)
	})
	_ = sess.CloseWithError("done")

	for kind, n := range want {
		if got := protocolErrors(t, s, kind); got != n {
			t.Errorf("protocol errors of kind %s: %v, want %v", kind, got, n)
		}
	}
	if !strings.Contains(s.pair.Core.Stderr(), "edge stream failed; closing that stream") {
		t.Error("the core did not log the bad streams")
	}
	realEdgeUnharmed(ctx, t, s, mins)
}

// A peer saying hello on several streams at once, for hundreds of connections, never
// crashes the core (it did: a hello was not made once, and the second one closed a
// closed channel); the real edge's requests, made all along, are answered once.
func TestConcurrentHellos(t *testing.T) {
	ctx := ctxFor(t, 4*time.Minute)
	s := startAll(t, harness.PairOpts{})
	mins := s.minions(t, harness.MinionOpts{Count: 10, IDPrefix: "ok"})
	r := newRogue(t, s, "rogue")

	load := make(chan error, 1)
	go func() {
		res, err := mins.Request(ctx, harness.RequestOpts{Count: 40, Size: 500, ReplySize: 99})
		if err == nil && res.OK != res.Total {
			err = fmt.Errorf("answered %d of %d", res.OK, res.Total)
		}
		load <- err
	}()
	const sessions, hellosEach = 200, 4
	acked := 0
	for i := range sessions {
		mode := tunnel.ModeQUIC
		if i%4 == 3 {
			mode = tunnel.ModeTCP
		}
		sess := r.dial(ctx, mode)
		session := wire.RandomID()
		var wg sync.WaitGroup
		var mu sync.Mutex
		oks := 0
		for range hellosEach {
			wg.Go(func() {
				_, typ, _, err := hello(ctx, sess, session)
				if err == nil && typ == wire.THelloAck {
					mu.Lock()
					oks++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if oks > 1 {
			t.Fatalf("session %d: %d hellos acknowledged on one connection, want one", i, oks)
		}
		acked += oks
		_ = sess.CloseWithError("done")
		if i%20 == 19 {
			coreAlive(t, s)
		}
	}
	if acked != sessions {
		t.Errorf("%d of %d connections got their one hello acknowledged", acked, sessions)
	}
	waitFor(t, ctx, "every extra hello counted", func() (bool, string) {
		n := protocolErrors(t, s, "second_hello")
		return n == sessions*(hellosEach-1), fmt.Sprintf("second_hello %v", n)
	})
	if err := <-load; err != nil {
		t.Errorf("the real edge's minions during the hellos: %v", err)
	}
	realEdgeUnharmed(ctx, t, s, mins)
}

// A peer presenting the real edge's session ID (it is logged at info level) is
// refused: it cannot take over that session, cancel its requests, or read its cached
// replies. Its own requests and cancels for the same IDs live in its own key space.
func TestSessionOfAnotherEdge(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	s := startAll(t, harness.PairOpts{})
	mins := s.minions(t, harness.MinionOpts{Count: 10, IDPrefix: "ok"})
	if res, err := mins.Request(ctx, harness.RequestOpts{Count: 2, Size: 500, ReplySize: 99}); err != nil || res.OK != res.Total {
		t.Fatalf("warm-up: %+v %v", res, err)
	}
	m := regexp.MustCompile(`edge started.*edge_session=([0-9a-f]{16})`).FindStringSubmatch(s.pair.Edge.Stderr())
	if m == nil {
		t.Fatalf("the edge did not log its session:\n%s", s.pair.Edge.Stderr())
	}
	var real uint64
	if _, err := fmt.Sscanf(m[1], "%x", &real); err != nil {
		t.Fatal(err)
	}
	r := newRogue(t, s, "rogue")
	for _, mode := range []tunnel.Mode{tunnel.ModeQUIC, tunnel.ModeTCP} {
		sess := r.dial(ctx, mode)
		_, typ, body, err := hello(ctx, sess, real)
		if err == nil && typ == wire.THelloAck {
			t.Fatalf("%v: the core took the real edge's session from another certificate", mode)
		}
		if typ == wire.TReject && !strings.Contains(string(body), "held by another certificate") {
			t.Errorf("%v: refusal %q does not say why", mode, body)
		}
		_ = sess.CloseWithError("done")
	}
	waitFor(t, ctx, "the refusals counted", func() (bool, string) {
		n, _ := s.pair.Core.Metric("salt_broker_core_edges_refused_total", `reason="session_of_another_certificate"`)
		return n == 2, fmt.Sprintf("refused %v", n)
	})
	if !strings.Contains(s.pair.Core.Stderr(), "held_by=edge") {
		t.Error("the core's refusal does not name the certificate holding the session")
	}

	// With its own session, the rogue asks for request IDs the real edge has used:
	// nothing of the real edge's comes back, and its cancels reach nothing of it.
	sess := r.dial(ctx, tunnel.ModeQUIC)
	defer sess.CloseWithError("done")
	if _, typ, _, err := hello(ctx, sess, wire.RandomID()); err != nil || typ != wire.THelloAck {
		t.Fatalf("rogue hello with its own session: %v %v", typ, err)
	}
	// A request under an ID the real edge used is the rogue's own: it goes to the
	// master as a new request (the master counts it) and its answer is the master's
	// answer to it, never the real edge's cached reply.
	before, err := s.master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = wire.Write(st, wire.TRequest, wire.Request{ID: 1, Frames: [][]byte{[]byte("rogue's own")}}.Encode())
	_ = st.SetReadDeadline(time.Now().Add(30 * time.Second))
	body, err := wire.NewReader(st, 1<<20).Expect(wire.TReply)
	if err != nil {
		t.Fatalf("the rogue's request 1: %v", err)
	}
	rep, err := wire.DecodeReply(body)
	if err != nil || len(rep.Frames) != 1 || !strings.Contains(string(rep.Frames[0]), "bad load") {
		t.Errorf("the rogue's request 1 was answered with %q %v, want the master's answer to its own bytes", rep.Frames, err)
	}
	_ = wire.Write(st, wire.TDone, wire.U64Body(1))
	_ = st.Close()
	if after, _ := s.master.Stats(ctx); after.Bad != before.Bad+1 {
		t.Errorf("the master saw %d bad requests, want the rogue's one (%d before)", after.Bad, before.Bad)
	}
	for id := uint64(1); id <= 3; id++ {
		st, err := sess.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = wire.Write(st, wire.TCancel, wire.U64Body(id))
		_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
		body, err := wire.NewReader(st, 1<<10).Expect(wire.TCancelReply)
		if err != nil {
			t.Fatalf("cancel %d: %v", id, err)
		}
		want := wire.CancelDone
		if id == 1 {
			want = wire.CancelAtMaster // its own request 1, answered above
		}
		if cr, err := wire.DecodeCancelReply(body); err != nil || cr.Result != want {
			t.Errorf("cancel %d of an ID only the real edge used: %+v %v, want it cancelled in the rogue's own space", id, cr, err)
		}
		_ = st.Close()
	}
	realEdgeUnharmed(ctx, t, s, mins)
}
