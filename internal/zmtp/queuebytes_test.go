package zmtp

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/internal/testlog"
)

// logBuffer collects a server's log lines for a test to read.
type logBuffer = testlog.Buffer

// waitQueued waits until the server's queued bytes satisfy ok.
func waitQueued(t *testing.T, ctx context.Context, stats func() Stats, ok func(int64) bool) {
	t.Helper()
	for !ok(stats().QueuedBytes) {
		select {
		case <-ctx.Done():
			t.Fatalf("queued bytes stayed at %d", stats().QueuedBytes)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// A subscriber that stops reading holds at most SendQueueBytes of large
// publications, far fewer than SendQueue messages of them; past it its copies are
// dropped, counted and logged, and the other subscribers receive every one.
func TestNonReadingSubscriberBoundedByBytes(t *testing.T) {
	const bound = 1 << 20
	logs := &logBuffer{}
	pub, err := ListenPub("127.0.0.1:0", Options{Logger: slog.New(slog.NewTextHandler(logs, nil)),
		SendQueueBytes: bound, WriteTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ctx := ctxFor(t, 30*time.Second)
	sub := func() *rawPeer {
		p := dialRaw(t, pub.Addr())
		p.handshake(t, "SUB")
		_ = p.send([]byte{1})
		pingCheck(t, p, "PUB") // its subscription is in place
		return p
	}
	readers := []*rawPeer{sub(), sub()}
	sub() // the stuck one: it reads nothing from now on
	waitPeers(t, ctx, pub.Stats, 3)

	// 400 × 64 KiB = 25 MiB: well past what the stuck peer's socket buffers take,
	// well under the 1,000-message count bound. Each publication is read by both
	// readers before the next, so only the stuck peer can fall behind.
	const n = 400
	payload := bytes.Repeat([]byte{'p'}, 64<<10)
	for i := range n {
		pub.Publish([][]byte{[]byte("t"), payload})
		for j, p := range readers {
			if m, err := p.recv(10 * time.Second); err != nil || len(m) != 2 || len(m[1]) != len(payload) {
				t.Fatalf("reader %d, publication %d: %d frames, %v", j, i, len(m), err)
			}
		}
	}
	// With the readers gone, what is queued is the stuck peer's alone.
	for _, p := range readers {
		_ = p.c.Close()
	}
	for pub.Stats().Peers > 1 {
		select {
		case <-ctx.Done():
			t.Fatalf("readers still connected: %d peers", pub.Stats().Peers)
		case <-time.After(5 * time.Millisecond):
		}
	}
	st := pub.Stats()
	if st.QueuedBytes <= 0 || st.QueuedBytes > bound {
		t.Errorf("the stuck subscriber holds %d bytes, want 1..%d", st.QueuedBytes, bound)
	}
	if st.Drops[queueBytes] == 0 || st.Drops[queueFull] != 0 {
		t.Errorf("drops %v: want the stuck subscriber's copies dropped by the byte bound, none by the count bound", st.Drops)
	}
	if !strings.Contains(logs.String(), "byte bound") {
		t.Errorf("no log line for the byte bound; logs:\n%s", logs.String())
	}
	t.Logf("stuck subscriber: %d bytes queued, drops %v", st.QueuedBytes, st.Drops)
}

// A reply larger than the ROUTER's byte bound is still delivered (it waits for
// nothing else in its peer's queue), so a large reply never wedges a minion; a peer
// that stops reading has further replies refused with ErrQueueFull, counted and
// logged, and once it reads again it is served again.
func TestRouterReplyOverTheByteBound(t *testing.T) {
	const bound = 256 << 10
	logs := &logBuffer{}
	r, err := ListenRouter("127.0.0.1:0", Options{Logger: slog.New(slog.NewTextHandler(logs, nil)),
		SendQueueBytes: bound, WriteTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := ctxFor(t, 30*time.Second)
	reader := dialRaw(t, r.Addr())
	reader.handshakeWith(t, map[string][]byte{"Socket-Type": []byte("DEALER"), "Identity": []byte("reader")})
	slow := dialRaw(t, r.Addr())
	slow.handshakeWith(t, map[string][]byte{"Socket-Type": []byte("DEALER"), "Identity": []byte("slow")})
	waitPeers(t, ctx, r.Stats, 2)
	big := bytes.Repeat([]byte{'r'}, 1<<20) // a file chunk, 4 × the bound
	bigReply := func(k string) {
		t.Helper()
		if err := r.Send([]byte("reader"), [][]byte{nil, big}); err != nil {
			t.Fatalf("%s: a reply over the byte bound into an empty queue: %v", k, err)
		}
		if m, err := reader.recv(10 * time.Second); err != nil || len(m) != 2 || len(m[1]) != len(big) {
			t.Fatalf("%s: the large reply did not arrive: %d frames, %v", k, len(m), err)
		}
	}
	bigReply("first")
	waitQueued(t, ctx, r.Stats, func(n int64) bool { return n == 0 }) // its write is done
	bigReply("second")

	accepted := 0
	full := false
	for i := 0; i < 64 && !full; i++ { // at most 64 MiB of socket buffers, shared slice
		switch err := r.Send([]byte("slow"), [][]byte{nil, big}); {
		case errors.Is(err, ErrQueueFull):
			full = true
		case err != nil:
			t.Fatal(err)
		default:
			accepted++
		}
	}
	if !full {
		t.Fatalf("a peer that reads nothing took %d MiB of replies under a %d KiB byte bound", accepted, bound>>10)
	}
	// The writer may have handed the held reply to the kernel since the refusal, so
	// the queue may be empty again by now; it never holds more than one reply.
	st := r.Stats()
	if st.QueuedBytes > int64(len(big)) {
		t.Errorf("queued %d bytes: want one reply's %d at most", st.QueuedBytes, len(big))
	}
	if st.Drops[queueBytes] != 1 || st.Drops[queueFull] != 0 {
		t.Errorf("drops %v: want 1 by the byte bound, none by the count bound", st.Drops)
	}
	if !strings.Contains(logs.String(), "byte bound") {
		t.Errorf("no log line for the byte bound; logs:\n%s", logs.String())
	}
	bigReply("beside a full peer")

	// The slow peer reads what it was sent, and is served again.
	for i := range accepted {
		if m, err := slow.recv(10 * time.Second); err != nil || len(m) != 2 {
			t.Fatalf("slow peer, reply %d of %d: %v", i, accepted, err)
		}
	}
	waitQueued(t, ctx, r.Stats, func(n int64) bool { return n == 0 })
	if err := r.Send([]byte("slow"), [][]byte{nil, big}); err != nil {
		t.Fatalf("a peer that caught up is refused: %v", err)
	}
	if m, err := slow.recv(10 * time.Second); err != nil || len(m) != 2 {
		t.Fatalf("the reply after catching up did not arrive: %v", err)
	}
}
