package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/test/harness"
	"github.com/salt-broker/salt-broker/tunnel"
)

// A peer with a valid edge certificate that speaks nonsense to the core (DESIGN §3
// invariant 7): each bad stream is closed with a log line and counted; the peer's
// other streams, and the real edge with its minions, carry on.
func TestTrustedEdgeSpeakingNonsense(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	s := startAll(t, harness.PairOpts{})
	mins := s.minions(t, harness.MinionOpts{Count: 10, IDPrefix: "ok"})

	dir := s.pair.PKI.Dir
	tlsCfg, err := certs.LoadClient(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "edge.crt"), filepath.Join(dir, "edge.key"))
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []tunnel.Mode{tunnel.ModeQUIC, tunnel.ModeTCP} {
		sess, err := tunnel.Dial(ctx, s.pair.CoreAddr, tunnel.Config{TLS: tlsCfg}, tunnel.DialOptions{Mode: mode})
		if err != nil {
			t.Fatal(err)
		}
		ctl, err := sess.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		hello := wire.Hello{Version: wire.Version, EdgeName: "hostile", EdgeSession: wire.RandomID()}
		if err := wire.Write(ctl, wire.THello, hello.Encode()); err != nil {
			t.Fatal(err)
		}
		if _, err := wire.NewReader(ctl, 1<<10).Expect(wire.THelloAck); err != nil {
			t.Fatalf("%v: hello: %v", mode, err)
		}
		for _, bad := range [][]byte{
			wire.Append(nil, wire.Type(0xEE), []byte("not a record type")),
			wire.Append(nil, wire.TPong, nil),                    // a control record opening a stream
			wire.Append(nil, wire.TRequest, []byte{1, 2, 3}),     // a request too short to hold its ID
			wire.Append(nil, wire.TSubscribe, []byte("garbage")), // a malformed subscribe
		} {
			st, err := sess.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = st.Write(bad)
			_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, _, err := wire.NewReader(st, 1<<10).Next(); err == nil {
				t.Errorf("%v: the core answered a bad stream (%x) instead of closing it", mode, bad[:1])
			}
			_ = st.Close()
		}
		// The peer's control stream still answers: only the bad streams were closed.
		if err := wire.Write(ctl, wire.TPing, wire.U64Body(7)); err != nil {
			t.Fatal(err)
		}
		if _, err := wire.NewReader(ctl, 1<<10).Expect(wire.TPong); err != nil {
			t.Errorf("%v: the hostile peer's control stream died with its bad streams: %v", mode, err)
		}
		_ = sess.CloseWithError("done")
	}

	if n, _ := s.pair.Core.Metric("salt_broker_core_tunnel_protocol_errors_total"); n < 2 {
		t.Errorf("protocol errors counted: %v, want every unknown or malformed opening record", n)
	}
	if !strings.Contains(s.pair.Core.Stderr(), "edge stream failed; closing that stream") {
		t.Error("the core did not log the bad streams")
	}
	res, err := mins.Request(ctx, harness.RequestOpts{Count: 5, Size: 500, ReplySize: 99})
	if err != nil || res.OK != res.Total {
		t.Errorf("the real edge's minions after the hostile peer: %+v %v", res, err)
	}
	if st, _ := s.master.Stats(ctx); st.DupRIDs != 0 {
		t.Errorf("%d duplicated requests at the master", st.DupRIDs)
	}
}
