package zmtp

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/salt-broker/salt-broker/test/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// libzmq starts testdata/libzmq_peer.py (real libzmq) and returns it.
func libzmq(t *testing.T, args ...string) *harness.Proc {
	t.Helper()
	script, _ := filepath.Abs("testdata/libzmq_peer.py")
	return harness.Start(t, "libzmq-"+args[0], exec.Command(harness.Python(t), append([]string{"-u", script}, args...)...))
}

func done(t *testing.T, ctx context.Context, p *harness.Proc) map[string]any {
	t.Helper()
	ev, err := p.WaitEvent(ctx, "done")
	if err != nil {
		t.Fatalf("%s: %v", p.Name, err)
	}
	return ev
}

func num(v any) int { f, _ := v.(float64); return int(f) }

func waitPeers(t *testing.T, ctx context.Context, stats func() Stats, n int64) {
	t.Helper()
	for stats().Peers < n {
		select {
		case <-ctx.Done():
			t.Fatalf("only %d of %d peers connected", stats().Peers, n)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitSubscribed waits until exactly n peers of pub hold a subscription.
func waitSubscribed(t *testing.T, ctx context.Context, pub *Pub, n int) {
	t.Helper()
	for {
		got := 0
		pub.s.mu.RLock()
		for p := range pub.s.peers {
			p.subMu.RLock()
			if p.all > 0 || len(p.subs) > 0 {
				got++
			}
			p.subMu.RUnlock()
		}
		pub.s.mu.RUnlock()
		if got == n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d peers subscribed, want %d", got, n)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// echo serves a Router: every request body comes back prefixed with "ok:".
func echo(ctx context.Context, r *Router, seen func(Message)) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			m, err := r.Recv(ctx)
			if err != nil {
				return
			}
			if seen != nil {
				seen(m)
			}
			last := len(m.Frames) - 1
			reply := append(append([][]byte{}, m.Frames[:last]...), append([]byte("ok:"), m.Frames[last]...))
			_ = r.Send(m.Identity, reply)
		}
	})
	return &wg
}

// libzmq SUBs with no subscription, with ”, with Salt's topics, and one that
// unsubscribes at run time, each get exactly what libzmq's own PUB would give them.
func TestPubToLibzmqSubscribers(t *testing.T) {
	ctx := ctxFor(t, time.Minute)
	pub, err := ListenPub("127.0.0.1:0", Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ep := "tcp://" + pub.Addr().String()
	hexTopic := hex.EncodeToString(bytes.Repeat([]byte{0xab}, 20))
	// Each counts until it has what it should get (a quiet spell is no end: under
	// load the pause between the two batches can last seconds), then a moment more.
	all := libzmq(t, "sub", ep, "--subs", "", "--expect", "300")
	none := libzmq(t, "sub", ep, "--none")
	bcast := libzmq(t, "sub", ep, "--subs", "broadcast", "--expect", "100")
	minion := libzmq(t, "sub", ep, "--subs", hexTopic+",broad", "--expect", "200")
	leaver := libzmq(t, "sub", ep, "--subs", "broadcast", "--unsub-after", "50")
	waitPeers(t, ctx, pub.Stats, 5)
	waitSubscribed(t, ctx, pub, 4) // subscriptions follow the handshake; "none" has none
	send := func(topic string, n int) {
		for i := 0; i < n; i++ {
			pub.Publish([][]byte{[]byte(topic), []byte(fmt.Sprintf("%s payload %d", topic, i))})
		}
	}
	send("broadcast", 50)
	if _, err := leaver.WaitEvent(ctx, "unsubscribed"); err != nil {
		t.Fatal(err)
	}
	waitSubscribed(t, ctx, pub, 3) // the leaver's cancel has reached the server
	send("broadcast", 50)
	send(hexTopic, 100)
	send("other", 100)
	want := map[*harness.Proc]map[string]int{
		all:    {"broadcast": 100, hexTopic: 100, "other": 100},
		none:   {},
		bcast:  {"broadcast": 100},
		minion: {"broadcast": 100, hexTopic: 100},
		leaver: {"broadcast": 50},
	}
	for p, w := range want {
		ev := done(t, ctx, p)
		counts := ev["counts"].(map[string]any)
		if len(counts) != len(w) || num(ev["bad"]) != 0 {
			t.Errorf("%s got %v, want %v", p.Name, counts, w)
			continue
		}
		for k, n := range w {
			if num(counts[k]) != n {
				t.Errorf("%s topic %.12s: got %d, want %d", p.Name, k, num(counts[k]), n)
			}
		}
	}
}

// 500 concurrent libzmq REQ sockets each get their own replies.
func TestRouterServes500LibzmqREQ(t *testing.T) {
	ctx := ctxFor(t, time.Minute)
	r, err := ListenRouter("127.0.0.1:0", Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ids := map[string]bool{}
	var mu sync.Mutex
	wg := echo(ctx, r, func(m Message) {
		mu.Lock()
		ids[string(m.Identity)] = true
		mu.Unlock()
	})
	p := libzmq(t, "req", "tcp://"+r.Addr().String(), "--clients", "500", "--rounds", "4", "--size", "100")
	ev := done(t, ctx, p)
	if num(ev["ok"]) != 2000 || num(ev["bad"]) != 0 {
		t.Errorf("500 REQ × 4: %v", ev)
	}
	mu.Lock()
	for id := range ids {
		if len(id) != 5 || id[0] != 0 {
			t.Errorf("anonymous identity %x is not libzmq-style (5 bytes, leading zero)", id)
			break
		}
	}
	if len(ids) != 500 {
		t.Errorf("%d identities for 500 peers", len(ids))
	}
	mu.Unlock()
	_ = r.Close()
	wg.Wait()
}

// DEALERs with and without identities, a second connection taking over an identity,
// reconnecting peers, and a peer with ZMQ_HEARTBEAT_IVL that must stay connected.
func TestRouterIdentitiesHandoverHeartbeat(t *testing.T) {
	ctx := ctxFor(t, time.Minute)
	var gone []string
	var mu sync.Mutex
	r, err := ListenRouter("127.0.0.1:0", Options{Logger: quiet, OnPeerGone: func(id []byte) {
		mu.Lock()
		gone = append(gone, string(id))
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	seen := map[string]int{}
	wg := echo(ctx, r, func(m Message) {
		mu.Lock()
		seen[string(m.Identity)]++
		mu.Unlock()
	})
	ep := "tcp://" + r.Addr().String()
	if ev := done(t, ctx, libzmq(t, "dealer", ep, "--identity", "salt-req/m1", "--rounds", "5")); num(ev["ok"]) != 5 {
		t.Errorf("dealer with identity: %v", ev)
	}
	if ev := done(t, ctx, libzmq(t, "dealer", ep, "--rounds", "5")); num(ev["ok"]) != 5 {
		t.Errorf("anonymous dealer: %v", ev)
	}
	if ev := done(t, ctx, libzmq(t, "req", ep, "--identity", "salt-req/r1", "--rounds", "3")); num(ev["ok"]) != 3 {
		t.Errorf("REQ with identity: %v", ev)
	}
	// Handover: the first holds its connection open while a second with the same identity arrives.
	first := libzmq(t, "dealer", ep, "--identity", "dup", "--rounds", "1", "--hold", "3")
	done(t, ctx, first)
	second := libzmq(t, "dealer", ep, "--identity", "dup", "--rounds", "3")
	if ev := done(t, ctx, second); num(ev["ok"]) != 3 {
		t.Errorf("handover: the new connection got %v", ev)
	}
	// Reconnecting peers: ten in a row, each served.
	for i := 0; i < 10; i++ {
		// Bodies over 64 KiB: LONG frames, and the server's incremental allocation.
		if ev := done(t, ctx, libzmq(t, "req", ep, "--rounds", "2", "--size", "70000")); num(ev["ok"]) != 2 {
			t.Fatalf("reconnecting peer %d: %v", i, ev)
		}
	}
	before := r.Stats().PeersAccepted
	if ev := done(t, ctx, libzmq(t, "heartbeat", ep, "--ivl", "100", "--sleep", "1.2")); num(ev["ok"]) != 2 {
		t.Errorf("heartbeat peer: %v", ev)
	}
	if n := r.Stats().PeersAccepted - before; n != 1 {
		t.Errorf("a peer with ZMQ_HEARTBEAT_IVL reconnected: %d connections", n)
	}
	mu.Lock()
	if seen["salt-req/m1"] != 5 || seen["dup"] != 4 || seen["salt-req/r1"] != 3 {
		t.Errorf("identities seen: %v", seen)
	}
	mu.Unlock()
	_ = r.Close()
	wg.Wait()
}
