package zmtp

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// handshakeWith is rawPeer.handshake with an announced Identity.
func (p *rawPeer) handshakeWith(t *testing.T, props map[string][]byte) {
	t.Helper()
	g := greeting()
	g[32] = 0
	if _, err := p.c.Write(g); err != nil {
		t.Fatal(err)
	}
	bw := bufio.NewWriter(p.c)
	_ = writeMessage(bw, [][]byte{readyBody(props)}, true)
	_ = bw.Flush()
	_ = p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.br.Discard(greetingLen); err != nil {
		t.Fatal(err)
	}
	fr := frameReader{r: p.br, maxMessage: 1 << 20}
	if _, isCmd, err := fr.readMessage(); err != nil || !isCmd {
		t.Fatalf("no READY: %v", err)
	}
	_ = p.c.SetReadDeadline(time.Time{})
}

func (p *rawPeer) sendCommand(t *testing.T, name string, data []byte) {
	t.Helper()
	bw := bufio.NewWriter(p.c)
	if err := writeMessage(bw, [][]byte{command(name, data)}, true); err != nil {
		t.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
}

// recvAny reads one message or command.
func (p *rawPeer) recvAny(d time.Duration) ([][]byte, bool, error) {
	_ = p.c.SetReadDeadline(time.Now().Add(d))
	fr := frameReader{r: p.br, maxMessage: 1 << 24}
	return fr.readMessage()
}

// Subscriptions are counted like libzmq's: a topic subscribed twice, in either the
// ZMTP 3.0 message form or the 3.1 command form, needs two cancels.
func TestSubscriptionsCountedBothForms(t *testing.T) {
	pub, err := ListenPub("127.0.0.1:0", Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ctx := ctxFor(t, 20*time.Second)
	type form struct {
		name        string
		sub, cancel func(p *rawPeer, topic string)
	}
	forms := []form{
		{name: "3.0 messages",
			sub:    func(p *rawPeer, topic string) { _ = p.send(append([]byte{1}, topic...)) },
			cancel: func(p *rawPeer, topic string) { _ = p.send(append([]byte{0}, topic...)) }},
		{name: "3.1 commands",
			sub:    func(p *rawPeer, topic string) { p.sendCommand(t, "SUBSCRIBE", []byte(topic)) },
			cancel: func(p *rawPeer, topic string) { p.sendCommand(t, "CANCEL", []byte(topic)) }},
	}
	for i, f := range forms {
		p := dialRaw(t, pub.Addr())
		p.handshake(t, "SUB")
		waitPeers(t, ctx, pub.Stats, int64(i+1))
		f.sub(p, "marker")
		f.sub(p, "a")
		f.sub(p, "a")
		f.cancel(p, "a")
		// The first message after the subscriptions settle tells which topics are live.
		probe := func(wantA bool) {
			t.Helper()
			// The server reads a peer in order: its PONG means our subscription
			// messages before the PING have been applied (no sleep to guess it).
			pingCheck(t, p, f.name)
			pub.Publish([][]byte{[]byte("abc"), []byte("payload")})
			pub.Publish([][]byte{[]byte("marker"), []byte("m")})
			m, err := p.recv(3 * time.Second)
			if err != nil {
				t.Fatalf("%s: %v", f.name, err)
			}
			gotA := string(m[0]) == "abc"
			if gotA != wantA {
				t.Fatalf("%s: got %q first, wanted prefix match on 'a' = %v", f.name, m[0], wantA)
			}
			if gotA {
				if m, err := p.recv(3 * time.Second); err != nil || string(m[0]) != "marker" {
					t.Fatalf("%s: marker after abc: %q %v", f.name, m, err)
				}
			}
		}
		probe(true) // one of two subscriptions cancelled: still subscribed
		f.cancel(p, "a")
		probe(false)
		f.cancel(p, "a") // a cancel too many is harmless
		f.sub(p, "")
		probe(true)
	}
}

// PING is answered with PONG echoing the context, by PUB and ROUTER; a SUB with no
// subscription gets nothing (the PONG is the first thing it reads).
func TestPingPong(t *testing.T) {
	pub, err := ListenPub("127.0.0.1:0", Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	sub := dialRaw(t, pub.Addr())
	sub.handshake(t, "SUB")
	waitPeers(t, ctxFor(t, 5*time.Second), pub.Stats, 1)
	pub.Publish([][]byte{[]byte("nobody wants this")})
	pingCheck(t, sub, "PUB")

	r, err := ListenRouter("127.0.0.1:0", Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dealer := dialRaw(t, r.Addr())
	dealer.handshake(t, "DEALER")
	pingCheck(t, dealer, "ROUTER")
}

func pingCheck(t *testing.T, p *rawPeer, k string) {
	t.Helper()
	p.sendCommand(t, "PING", append([]byte{0, 30}, "ctx-123"...))
	m, isCmd, err := p.recvAny(3 * time.Second)
	if err != nil || !isCmd {
		t.Fatalf("%s: no PONG: %v %v", k, m, err)
	}
	name, data, err := parseCommand(m[0])
	if err != nil || name != "PONG" || string(data) != "ctx-123" {
		t.Fatalf("%s: got %q %q %v, want PONG ctx-123", k, name, data, err)
	}
}

// Frames of every length class (short, LONG, above the eager allocation) and
// multipart messages go through a Router both ways unchanged.
func TestRouterFramesRoundTrip(t *testing.T) {
	ctx := ctxFor(t, 20*time.Second)
	r, err := ListenRouter("127.0.0.1:0", Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	wg := echo(ctx, r, nil)
	p := dialRaw(t, r.Addr())
	p.handshake(t, "DEALER")
	for _, n := range []int{0, 1, 255, 256, 70_000, 1 << 20} {
		body := bytes.Repeat([]byte{byte(n)}, n)
		if err := p.send([]byte("a"), nil, body); err != nil {
			t.Fatal(err)
		}
		m, err := p.recv(5 * time.Second)
		if err != nil || len(m) != 3 || string(m[0]) != "a" || len(m[1]) != 0 || !bytes.Equal(m[2], append([]byte("ok:"), body...)) {
			t.Fatalf("%d-byte frame: %d frames, %v", n, len(m), err)
		}
	}
	_ = r.Close()
	wg.Wait()
}

// Send reports unknown peers and full queues at once and counts them; after Close, ErrClosed.
func TestRouterSendErrors(t *testing.T) {
	r, err := ListenRouter("127.0.0.1:0", Options{Logger: quiet, SendQueue: 2, WriteTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Send([]byte("nobody"), [][]byte{[]byte("x")}); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("unknown peer: %v", err)
	}
	p := dialRaw(t, r.Addr())
	p.handshakeWith(t, map[string][]byte{"Socket-Type": []byte("DEALER"), "Identity": []byte("slow")})
	waitPeers(t, ctxFor(t, 5*time.Second), r.Stats, 1)
	big := make([]byte, 1<<20)
	full := false
	for i := 0; i < 200 && !full; i++ { // at most 200 MiB of socket buffers, shared slice
		start := time.Now()
		err := r.Send([]byte("slow"), [][]byte{big})
		// A blocking Send would wait forever on a peer that reads nothing; 2 s tells
		// that apart from a slow machine (CI with -race).
		if time.Since(start) > 2*time.Second {
			t.Fatalf("Send blocked for %s", time.Since(start))
		}
		switch {
		case errors.Is(err, ErrQueueFull):
			full = true
		case err != nil:
			t.Fatal(err)
		}
	}
	if !full {
		t.Fatal("a peer that never reads never filled its queue")
	}
	st := r.Stats()
	if st.Drops["unknown_peer"] != 1 || st.Drops["queue_full"] != 1 {
		t.Errorf("drops %v", st.Drops)
	}
	_ = r.Close()
	if err := r.Send([]byte("slow"), [][]byte{big}); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
	if _, err := r.Recv(ctxFor(t, time.Second)); !errors.Is(err, ErrClosed) {
		t.Errorf("Recv after Close: %v", err)
	}
}

// A second connection with an Identity takes it over: the first is closed, replies go
// to the second, and OnPeerGone fires once, when the identity's last holder leaves.
// An Identity starting with a zero byte is libzmq's reserved space: the peer gets a
// generated one instead.
func TestRouterHandover(t *testing.T) {
	var mu sync.Mutex
	var gone []string
	r, err := ListenRouter("127.0.0.1:0", Options{Logger: quiet, OnPeerGone: func(id []byte) {
		mu.Lock()
		gone = append(gone, string(id))
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := ctxFor(t, 10*time.Second)
	id := map[string][]byte{"Socket-Type": []byte("DEALER"), "Identity": []byte("minion-1")}
	first := dialRaw(t, r.Addr())
	first.handshakeWith(t, id)
	waitPeers(t, ctx, r.Stats, 1)
	second := dialRaw(t, r.Addr())
	second.handshakeWith(t, id)
	if !first.closed(3 * time.Second) {
		t.Fatal("the first holder of a handed-over identity was not closed")
	}
	if err := r.Send([]byte("minion-1"), [][]byte{[]byte("to-second")}); err != nil {
		t.Fatal(err)
	}
	if m, err := second.recv(3 * time.Second); err != nil || string(m[0]) != "to-second" {
		t.Fatalf("second: %q %v", m, err)
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	if len(gone) != 0 {
		t.Errorf("OnPeerGone during a handover: %q", gone)
	}
	mu.Unlock()

	zero := dialRaw(t, r.Addr())
	zero.handshakeWith(t, map[string][]byte{"Socket-Type": []byte("DEALER"), "Identity": {0, 1, 2, 3, 4}})
	if err := zero.send([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	m, err := r.Recv(ctx)
	if err != nil || len(m.Identity) != 5 || m.Identity[0] != 0 || bytes.Equal(m.Identity, []byte{0, 1, 2, 3, 4}) {
		t.Errorf("reserved identity: got %x %v", m.Identity, err)
	}

	_ = second.c.Close()
	deadline := time.Now().Add(3 * time.Second)
	for {
		mu.Lock()
		n := len(gone)
		mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	if len(gone) != 1 || gone[0] != "minion-1" {
		t.Errorf("OnPeerGone: %q, want [minion-1]", gone)
	}
	mu.Unlock()
	if err := r.Send([]byte("minion-1"), [][]byte{[]byte("x")}); !errors.Is(err, ErrUnknownPeer) {
		t.Errorf("Send to a gone identity: %v", err)
	}
}

// Peers announcing large frames (allowed by MaxMessageSize) and then going quiet cost
// what they sent, not what they announced.
func TestAnnouncedFramesCostWhatWasSent(t *testing.T) {
	r, err := ListenRouter("127.0.0.1:0", Options{Logger: quiet}) // 64 MiB limit
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	heap0 := heapMB()
	const n = 20
	for i := 0; i < n; i++ {
		p := dialRaw(t, r.Addr())
		p.handshake(t, "DEALER")
		hdr := binary.BigEndian.AppendUint64([]byte{flagLong}, 32<<20)
		if _, err := p.c.Write(append(hdr, make([]byte, 1000)...)); err != nil {
			t.Fatal(err)
		}
	}
	waitPeers(t, ctxFor(t, 5*time.Second), r.Stats, n)
	time.Sleep(200 * time.Millisecond)
	if h := heapMB(); h > heap0+32 {
		t.Errorf("%d peers announcing 32 MiB frames grew the heap from %.1f to %.1f MB", n, heap0, h)
	}
}

// Old protocol revisions and other mechanisms are refused at once (not after the
// handshake timeout), each counted under its own cause.
func TestRefusedPeersQuickly(t *testing.T) {
	r, err := ListenRouter("127.0.0.1:0", Options{Logger: quiet, HandshakeTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	zmtp2 := append([]byte{0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f}, 1, 5, 0, 0) // revision 1, REQ, empty identity
	curve := greeting()
	curve[32] = 0
	copy(curve[12:32], "CURVE\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")
	for name, hello := range map[string][]byte{"ZMTP 2.0": zmtp2, "CURVE": curve} {
		p := dialRaw(t, r.Addr())
		start := time.Now()
		_, _ = p.c.Write(hello)
		if !p.closed(3 * time.Second) {
			t.Errorf("%s peer not closed", name)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s peer closed only after %s", name, d)
		}
	}
	st := r.Stats().HandshakeFailures
	if st[causeBadVersion] != 1 || st[causeBadMechanism] != 1 {
		t.Errorf("handshake failures %v", st)
	}
}

// A subscriber past the subscription limits is disconnected, so it cannot make
// every Publish slow; the others keep receiving.
func TestSubscriptionLimits(t *testing.T) {
	pub, err := ListenPub("127.0.0.1:0", Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ctx := ctxFor(t, 10*time.Second)
	good := dialRaw(t, pub.Addr())
	good.handshake(t, "SUB")
	_ = good.send([]byte("\x01t"))
	greedy := dialRaw(t, pub.Addr())
	greedy.handshake(t, "SUB")
	longTopic := dialRaw(t, pub.Addr())
	longTopic.handshake(t, "SUB")
	waitPeers(t, ctx, pub.Stats, 3)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { // the server may close before all are written
		for i := 0; i <= maxSubscriptions; i++ {
			if greedy.send(fmt.Appendf([]byte{1}, "topic-%d", i)) != nil {
				return
			}
		}
	})
	longTopic.sendCommand(t, "SUBSCRIBE", bytes.Repeat([]byte{'x'}, maxTopicLen+1))
	if !greedy.closed(3*time.Second) || !longTopic.closed(3*time.Second) {
		t.Fatal("a subscriber past the limits was not closed")
	}
	pub.Publish([][]byte{[]byte("t"), []byte("still here")})
	if m, err := good.recv(3 * time.Second); err != nil || string(m[1]) != "still here" {
		t.Fatalf("good subscriber: %q %v", m, err)
	}
	if n := pub.Stats().Drops["subscriptions"]; n != 2 {
		t.Errorf("subscriptions drops = %d, want 2", n)
	}
}

// Message.First marks the first data message of each connection only: the edge's
// retry rules read "a new socket's first request" from the router, which owns the
// connections, instead of keeping a set of sockets of their own. A PING before it
// does not count.
func TestRouterMarksEachConnectionsFirstMessage(t *testing.T) {
	ctx := ctxFor(t, 20*time.Second)
	r, err := ListenRouter("127.0.0.1:0", Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, name := range []string{"one", "two"} {
		p := dialRaw(t, r.Addr())
		p.handshake(t, "DEALER")
		p.sendCommand(t, "PING", []byte{0, 10})
		for i := range 3 {
			if err := p.send([]byte(name)); err != nil {
				t.Fatal(err)
			}
			m, err := r.Recv(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := i == 0; m.First != want || string(m.Frames[0]) != name {
				t.Errorf("connection %s, message %d (%q): First %v, want %v", name, i, m.Frames[0], m.First, want)
			}
		}
	}
}
