package core

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/tunnel"
)

// poolEdge is one connection of a test edge session, dialed and said hello in a slot.
type poolEdge struct {
	sess tunnel.Session
	ctl  tunnel.Stream
}

func dialSlot(t *testing.T, c *Core, tlsCfg tunnel.Config, session uint64, slot uint32) poolEdge {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := tunnel.Dial(ctx, c.Addr().String(), tlsCfg, tunnel.DialOptions{Mode: tunnel.ModeQUIC})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sess.CloseWithError("test over") })
	ctl, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := wire.Write(ctl, wire.THello, wire.Hello{Version: wire.Version, EdgeName: "pool-edge", EdgeSession: session, Conn: slot}.Encode()); err != nil {
		t.Fatal(err)
	}
	_ = ctl.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := wire.NewReader(ctl, 1<<10).Expect(wire.THelloAck); err != nil {
		t.Fatalf("hello in slot %d: %v", slot, err)
	}
	return poolEdge{sess: sess, ctl: ctl}
}

// request sends one request on its own stream; its answer (or an error) arrives
// on the channel.
func (p poolEdge) request(t *testing.T, id uint64, payload string) <-chan answer {
	out := make(chan answer, 1)
	st, err := p.sess.OpenStream(context.Background())
	if err != nil {
		out <- answer{err: err}
		return out
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := wire.Write(st, wire.TRequest, wire.Request{ID: id, Frames: frames(payload)}.Encode()); err != nil {
		out <- answer{err: err}
		return out
	}
	go func() {
		_ = st.SetReadDeadline(time.Now().Add(30 * time.Second))
		typ, body, err := wire.NewReader(st, 1<<20).Next()
		a := answer{typ: typ, err: err}
		if err == nil && typ == wire.TReply {
			a.reply, a.err = wire.DecodeReply(body)
			_ = wire.Write(st, wire.TDone, wire.U64Body(id))
		}
		out <- a
	}()
	return out
}

// An edge session's pool at the core (issue 11 item 3): two connections of one
// session both carry requests; a request re-sent under its ID on the other
// connection (its first connection died) joins the same entry, so the master sees
// it once and the re-send gets its reply; a new connection in a slot closes only
// the old connection of that slot; another certificate still cannot take the
// session while its connections are open.
func TestPoolConnectionsOfOneSession(t *testing.T) {
	pki, err := certs.NewEphemeral(nil)
	if err != nil {
		t.Fatal(err)
	}
	retPort := freeTCPPort(t)
	c, err := New(Config{Name: "test-core", MasterHost: "127.0.0.1", Listen: "127.0.0.1:0",
		MasterPubPort: freeTCPPort(t), MasterRetPort: retPort, MasterTimeout: time.Hour,
		Tunnel: tunnel.Config{TLS: pki.Server}, Registry: prometheus.NewRegistry(), DrainTimeout: -1,
		Logger: slog.New(slog.NewTextHandler(&syncBuffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		_ = c.Run(ctx)
	}()
	m := startFakeMaster(t, retPort)
	t.Cleanup(func() {
		stop()
		select {
		case <-ran:
		case <-time.After(30 * time.Second):
			t.Error("the core did not stop within 30 s")
		}
	})
	edge := tunnel.Config{TLS: pki.Client}
	session := wire.RandomID()
	a, b := dialSlot(t, c, edge, session, 0), dialSlot(t, c, edge, session, 1)

	fromMaster := func(want string) zmq4.Msg {
		t.Helper()
		select {
		case msg := <-m.reqs:
			if len(msg.Frames) != 4 || string(msg.Frames[3]) != want {
				t.Fatalf("the master got %q, want %q", msg.Frames, want)
			}
			return msg
		case <-time.After(20 * time.Second):
			t.Fatalf("%q never reached the master", want)
		}
		return zmq4.Msg{}
	}
	reply := func(msg zmq4.Msg, body string) {
		t.Helper()
		if err := m.sock.SendMulti(zmq4.NewMsgFrom(msg.Frames[0], msg.Frames[1], nil, []byte(body))); err != nil {
			t.Fatal(err)
		}
	}
	expectReply := func(ch <-chan answer, id uint64, body string) {
		t.Helper()
		select {
		case got := <-ch:
			if got.err != nil || got.typ != wire.TReply || got.reply.ID != id || string(got.reply.Frames[0]) != body {
				t.Fatalf("request %d: %s %+v %v, want reply %q", id, got.typ, got.reply, got.err, body)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("request %d: no answer", id)
		}
	}

	// Both connections carry requests, at once.
	one, two := a.request(t, 1, "one"), b.request(t, 2, "two")
	got := map[string]zmq4.Msg{}
	for range 2 {
		select {
		case msg := <-m.reqs:
			got[string(msg.Frames[3])] = msg
		case <-time.After(20 * time.Second):
			t.Fatal("the two requests did not both reach the master")
		}
	}
	reply(got["one"], "r1")
	reply(got["two"], "r2")
	expectReply(one, 1, "r1")
	expectReply(two, 2, "r2")

	// Request 3 reaches the master over a; a dies before the reply; the edge re-sends
	// 3 on b: it joins the entry, the master's one reply answers it, and the master
	// never gets it twice.
	_ = a.request(t, 3, "three")
	first := fromMaster("three")
	_ = a.sess.CloseWithError("connection lost")
	resent := b.request(t, 3, "three")
	waitFor(t, 10*time.Second, "the re-send joining the entry", func() bool {
		return counterValue(t, c, "resent") == 1
	})
	reply(first, "r3")
	expectReply(resent, 3, "r3")
	select {
	case extra := <-m.reqs:
		t.Fatalf("the master got a request twice: %q", extra.Frames)
	case <-time.After(300 * time.Millisecond):
	}

	// A new connection in slot 1 closes the old one of slot 1 only.
	x := dialSlot(t, c, edge, session, 0)
	y := dialSlot(t, c, edge, session, 1)
	select {
	case <-b.sess.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the old connection of slot 1 was not closed")
	}
	four := x.request(t, 4, "four")
	reply(fromMaster("four"), "r4")
	expectReply(four, 4, "r4")
	if x.sess.Context().Err() != nil || y.sess.Context().Err() != nil {
		t.Fatal("a connection of another slot was closed")
	}

	// Another certificate cannot take the session its pool holds.
	waitFor(t, 10*time.Second, "the session counting its two open connections", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.sessions[session].conns == 2
	})
	if holder, ok := c.claimSession(sessionKey{cert: "another-edge", session: session}); ok || holder != "edge" {
		t.Fatalf("another certificate claimed a pooled session: ok %v holder %q", ok, holder)
	}
}

func counterValue(t *testing.T, c *Core, result string) float64 {
	t.Helper()
	mfs, err := c.cfg.Registry.(*prometheus.Registry).Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "salt_broker_core_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
