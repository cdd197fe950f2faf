package core

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/internal/testlog"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/tunnel"
)

func newTestTable() *table {
	return newTable(TableLimits{Entries: 4, ReplyBytes: 100, TTL: time.Minute})
}

func TestTableSendsEachIDToTheMasterOnce(t *testing.T) {
	tb := newTestTable()
	key := reqKey{sessionKey{"edge", 1}, 1}
	p, dup, busy := tb.submit(key, frames("req"), 0)
	if dup || busy {
		t.Fatal("first submit")
	}
	if sent, _ := tb.next(); sent != p {
		t.Fatal("next")
	}
	again, dup, _ := tb.submit(key, frames("req"), 0)
	if sent, _ := tb.next(); !dup || again != p || sent != nil {
		t.Fatal("a re-sent ID must join the first, not reach the master again")
	}
	if !tb.complete(p.ticket, frames("rep")) {
		t.Fatal("complete")
	}
	<-again.done
	reply, ref := tb.result(again)
	if ref != nil || string(reply[0]) != "rep" {
		t.Fatalf("reply %q refusal %+v", reply, ref)
	}
	if tb.complete(p.ticket, frames("rep")) {
		t.Fatal("a second reply for one ticket must be dropped")
	}
}

func TestTableCancel(t *testing.T) {
	tb := newTestTable()
	queued, _, _ := tb.submit(reqKey{sessionKey{"edge", 1}, 1}, frames("a"), 0)
	if got := tb.cancel(reqKey{sessionKey{"edge", 1}, 1}); got != wire.CancelDone {
		t.Fatalf("cancel queued: %d", got)
	}
	if p, _ := tb.next(); p != nil {
		t.Fatal("a cancelled request must not reach the master")
	}
	if _, ref := tb.result(queued); ref == nil || ref.Code != wire.RefusedCancelled {
		t.Fatal("cancelled request must be refused")
	}
	// Unknown: a tombstone, so a late copy never reaches the master either.
	if got := tb.cancel(reqKey{sessionKey{"edge", 1}, 2}); got != wire.CancelDone {
		t.Fatalf("cancel unknown: %d", got)
	}
	late, dup, _ := tb.submit(reqKey{sessionKey{"edge", 1}, 2}, frames("late"), 0)
	if !dup || late.state != stateRefused {
		t.Fatal("late copy of a cancelled request must be refused")
	}
	sent, _, _ := tb.submit(reqKey{sessionKey{"edge", 1}, 3}, frames("b"), 0)
	tb.next()
	if got := tb.cancel(reqKey{sessionKey{"edge", 1}, 3}); got != wire.CancelAtMaster {
		t.Fatalf("cancel at master: %d", got)
	}
	_ = sent
}

func TestTableBoundsAndTimeouts(t *testing.T) {
	tb := newTestTable()
	now := time.Unix(0, 0)
	tb.now = func() time.Time { return now }
	// Four edges, one request each: one edge alone may not take the last quarter.
	for i := uint64(1); i <= 4; i++ {
		if _, _, busy := tb.submit(reqKey{sessionKey{fmt.Sprint("edge", i), 1}, i}, frames("x"), 0); busy {
			t.Fatalf("request %d refused by a table with room", i)
		}
	}
	if _, _, busy := tb.submit(reqKey{sessionKey{"edge5", 1}, 9}, frames("x"), 0); !busy {
		t.Fatal("a full table must refuse")
	}
	p, _ := tb.next()
	now = now.Add(2 * time.Second)
	if n, _ := tb.sweep(time.Second); n != 1 {
		t.Fatalf("timed out %d, want 1", n)
	}
	if _, ref := tb.result(p); ref == nil || ref.Code != wire.RefusedTimeout {
		t.Fatal("timed-out request must be refused")
	}
	now = now.Add(2 * time.Minute)
	// The refused one is forgotten; the 3 still queued had no budget from their edge,
	// so the TTL is theirs: they are refused as stale, and remembered a while yet.
	if _, stale := tb.sweep(time.Second); stale != 3 {
		t.Fatalf("stale after TTL: %d, want 3", stale)
	}
	if _, n, _, _ := tb.snapshot(); n != 3 {
		t.Fatalf("entries after TTL: %d", n)
	}
}

func TestTableEvictsRepliesOverByteBound(t *testing.T) {
	tb := newTestTable()
	var ps []*pending
	for i := uint64(1); i <= 3; i++ {
		p, _, _ := tb.submit(reqKey{sessionKey{"edge", 1}, i}, frames("x"), 0)
		tb.next()
		ps = append(ps, p)
	}
	big := [][]byte{make([]byte, 60)}
	tb.complete(ps[0].ticket, big)
	tb.complete(ps[1].ticket, big) // 120 > 100: the oldest reply goes
	if _, ref := tb.result(ps[0]); ref == nil {
		t.Fatal("oldest cached reply should have been evicted")
	}
	if r, _ := tb.result(ps[1]); r == nil {
		t.Fatal("newest cached reply should stay")
	}
	if n := tb.counters().ReplyEvictions; n != 1 {
		t.Fatalf("reply evictions counted %d, want 1", n)
	}
	tb.delivered(ps[1].key)
	if _, _, _, b := tb.snapshot(); b != 0 {
		t.Fatalf("reply bytes after delivery: %d", b)
	}
}

func TestTableFail(t *testing.T) {
	tb := newTestTable()
	p, _, _ := tb.submit(reqKey{sessionKey{"edge", 1}, 1}, frames("x"), 0)
	tb.next()
	if !tb.fail(p.ticket, wire.RefusedTooLarge, "too large") {
		t.Fatal("fail")
	}
	if _, ref := tb.result(p); ref == nil || ref.Code != wire.RefusedTooLarge {
		t.Fatalf("refusal %+v", ref)
	}
	if tb.fail(p.ticket, wire.RefusedTooLarge, "again") || tb.complete(p.ticket, frames("late")) {
		t.Fatal("a failed ticket must take no further outcome")
	}
}

// boundedly runs f and fails the test if it has not returned within d: the table
// must never hang, so a hang is reported as a failure, not as a test timeout.
func boundedly(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("%s did not return within %v: the table is stuck", what, d)
	}
}

// Issue 10 item 4: with no sender draining the queue (the DEALER never connected),
// requests submitted and cancelled, and forgotten after the TTL, once filled the old
// queue channel, and the next submit blocked holding the table's mutex; the sweeper,
// /status and /metrics hung behind it. A cancelled request now leaves the queue when
// it is cancelled, so the queue holds what may still go to the master, and nothing
// waits under the lock.
func TestTableCancelledQueuedRequestsNeverBlockIt(t *testing.T) {
	tb := newTestTable() // 4 entries
	now := time.Unix(0, 0)
	tb.now = func() time.Time { return now }
	boundedly(t, 10*time.Second, "submit, cancel, sweep and snapshot", func() {
		for i := uint64(1); i <= 3*4; i++ {
			k := reqKey{sessionKey{"edge", 1}, i}
			if _, _, busy := tb.submit(k, frames("x"), 0); busy {
				t.Errorf("request %d refused: the table holds only forgotten requests", i)
				return
			}
			if got := tb.cancel(k); got != wire.CancelDone {
				t.Errorf("cancel %d: %d", i, got)
				return
			}
			if n, _ := tb.queue(); n != 0 {
				t.Errorf("a cancelled request is still queued (%d queued)", n)
			}
			now = now.Add(2 * time.Minute)
			tb.sweep(time.Minute)
			tb.snapshot()
		}
	})
	if s, entries, _, _ := tb.snapshot(); entries != 0 || s.Cancelled != 12 {
		t.Fatalf("entries %d cancelled %d, want 0 and 12", entries, s.Cancelled)
	}
}

// The queue towards the master is bounded in bytes too, and a refusal is counted.
func TestTableQueueIsBoundedInBytes(t *testing.T) {
	tb := newTable(TableLimits{Entries: 10, ReplyBytes: 100, QueueBytes: 10, TTL: time.Minute})
	key := func(i uint64) reqKey { return reqKey{sessionKey{"edge", 1}, i} }
	big := [][]byte{make([]byte, 6)}
	if _, _, busy := tb.submit(key(1), big, 0); busy {
		t.Fatal("the first request must fit")
	}
	if _, _, busy := tb.submit(key(2), big, 0); !busy {
		t.Fatal("a request past the queue's byte bound must be refused")
	}
	if n, b := tb.queue(); n != 1 || b != 6 {
		t.Fatalf("queued %d requests, %d bytes; want 1, 6", n, b)
	}
	tb.next() // to the master: its bytes leave the queue
	if _, _, busy := tb.submit(key(2), big, 0); busy {
		t.Fatal("the queue has room again once its request went to the master")
	}
	tb.next()
	// One request larger than the whole bound still passes an empty queue, or it
	// could never be served.
	if _, _, busy := tb.submit(key(3), [][]byte{make([]byte, 20)}, 0); busy {
		t.Fatal("an empty queue refused a request")
	}
	if s := tb.counters(); s.QueueFull != 1 {
		t.Fatalf("queue-full refusals %d, want 1", s.QueueFull)
	}
}

// The sender takes requests in order, and is woken for each.
func TestTableQueueOrderAndWakeUp(t *testing.T) {
	tb := newTestTable()
	var want []*pending
	for i := uint64(1); i <= 3; i++ {
		p, _, _ := tb.submit(reqKey{sessionKey{"edge", 1}, i}, frames("x"), 0)
		want = append(want, p)
	}
	select {
	case <-tb.kick:
	default:
		t.Fatal("no wake-up for the sender after a submit")
	}
	tb.cancel(want[1].key)
	for _, w := range []*pending{want[0], want[2], nil} {
		if p, _ := tb.next(); p != w {
			t.Fatalf("next: %v, want %v", p, w)
		}
	}
}

// Issue 10 item 5: a request waiting at the core for a slot at the master is refused
// as stale once it is older than the budget its edge gave it (or, without one, the
// dedup TTL), by the sweep whatever the links do, and never sent by next; a request
// at the master is not affected.
func TestTableExpiresQueuedRequestsByTheirBudget(t *testing.T) {
	tb := newTable(TableLimits{Entries: 10, ReplyBytes: 100, TTL: time.Hour})
	now := time.Unix(0, 0)
	tb.now = func() time.Time { return now }
	key := func(i uint64) reqKey { return reqKey{sessionKey{"edge", 1}, i} }
	auth, _, _ := tb.submit(key(1), frames("auth"), 30*time.Second)
	ret, _, _ := tb.submit(key(2), frames("return"), 15*time.Minute)
	none, _, _ := tb.submit(key(3), frames("no budget"), 0)

	now = now.Add(31 * time.Second)
	if _, stale := tb.sweep(time.Hour); stale != 1 {
		t.Fatalf("stale %d, want 1", stale)
	}
	if _, ref := tb.result(auth); ref == nil || ref.Code != wire.RefusedStale {
		t.Fatalf("the auth past its budget: %+v, want refused as stale", ref)
	}
	if p, _ := tb.next(); p != ret {
		t.Fatal("the return within its budget must go to the master")
	}
	now = now.Add(30 * time.Minute) // the return, at the master, is past its budget: no matter
	if _, stale := tb.sweep(time.Hour); stale != 0 {
		t.Fatalf("stale %d, want 0", stale)
	}
	if !tb.complete(ret.ticket, frames("reply")) {
		t.Fatal("a request at the master past its queue budget must still get its reply")
	}
	now = now.Add(30 * time.Minute) // past the TTL: the request without a budget expires
	if _, stale := tb.sweep(time.Hour); stale != 1 {
		t.Fatalf("stale %d, want 1", stale)
	}
	if _, ref := tb.result(none); ref == nil || ref.Code != wire.RefusedStale {
		t.Fatalf("the request without budget past the TTL: %+v", ref)
	}

	// Past its budget between two sweeps: next refuses it rather than send it, and
	// the next sweep counts it.
	late, _, _ := tb.submit(key(4), frames("late"), time.Second)
	now = now.Add(2 * time.Second)
	if p, _ := tb.next(); p != nil {
		t.Fatal("a request past its budget was sent to the master")
	}
	if _, ref := tb.result(late); ref == nil || ref.Code != wire.RefusedStale {
		t.Fatalf("late: %+v", ref)
	}
	if _, stale := tb.sweep(time.Hour); stale != 1 {
		t.Fatalf("stale refusals by next: %d, want 1", stale)
	}
}

// A storm of stale refusals is one log line per period, with the count.
func TestStaleLogSummarises(t *testing.T) {
	var buf syncBuffer
	s := staleLog{log: slog.New(slog.NewTextHandler(&buf, nil)), every: 10 * time.Second, queue: func() (int, int64) { return 7, 0 }}
	now := time.Unix(0, 0)
	for range 100 { // 100 sweeps, 50 refusals each, 100 ms apart
		s.add(50, now)
		now = now.Add(100 * time.Millisecond)
	}
	s.flush(now)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "count=50 ") || !strings.Contains(lines[1], "count=4950 ") ||
		!strings.Contains(lines[1], "still_queued=7") {
		t.Fatalf("want the first refusals at once, then one summary:\n%s", buf.String())
	}
}

// syncBuffer collects the core's log lines, safe for concurrent writes.
type syncBuffer = testlog.Buffer

// reqLab is a core serving one test edge over the real tunnel, with the table's
// clock in the test's hands. The master's ret port is reserved and closed until the
// test opens a fake master on it.
type reqLab struct {
	t       *testing.T
	c       *Core
	reg     *prometheus.Registry
	logs    *syncBuffer
	clock   atomic.Int64 // nanoseconds since the epoch, for the table
	retPort int
	sess    tunnel.Session
	ctl     tunnel.Stream
}

func freeTCPPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newReqLab(t *testing.T, cfg Config) *reqLab {
	pki, err := certs.NewEphemeral(nil)
	if err != nil {
		t.Fatal(err)
	}
	l := &reqLab{t: t, reg: prometheus.NewRegistry(), logs: &syncBuffer{}, retPort: freeTCPPort(t)}
	l.clock.Store(time.Unix(1_000_000, 0).UnixNano())
	cfg.Name, cfg.MasterHost, cfg.Listen = "test-core", "127.0.0.1", "127.0.0.1:0"
	cfg.MasterPubPort, cfg.MasterRetPort = freeTCPPort(t), l.retPort
	cfg.Tunnel = tunnel.Config{TLS: pki.Server}
	cfg.Logger = slog.New(slog.NewTextHandler(l.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Registry = l.reg
	cfg.DrainTimeout = -1
	if l.c, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	l.c.table.now = func() time.Time { return time.Unix(0, l.clock.Load()) }
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		_ = l.c.Run(ctx)
	}()
	t.Cleanup(func() {
		if l.sess != nil {
			_ = l.sess.CloseWithError("test over")
		}
		stop()
		select {
		case <-ran:
		case <-time.After(30 * time.Second):
			t.Error("the core did not stop within 30 s") // and goleak names what it left running
		}
	})

	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if l.sess, err = tunnel.Dial(dctx, l.c.Addr().String(), tunnel.Config{TLS: pki.Client}, tunnel.DialOptions{Mode: tunnel.ModeQUIC}); err != nil {
		t.Fatal(err)
	}
	if l.ctl, err = l.sess.OpenStream(dctx); err != nil {
		t.Fatal(err)
	}
	hello := wire.Hello{Version: wire.Version, EdgeName: "test-edge", EdgeSession: wire.RandomID()}
	if err := wire.Write(l.ctl, wire.THello, hello.Encode()); err != nil {
		t.Fatal(err)
	}
	_ = l.ctl.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := wire.NewReader(l.ctl, 1<<10).Expect(wire.THelloAck); err != nil {
		t.Fatalf("hello: %v", err)
	}
	return l
}

func (l *reqLab) advance(d time.Duration) { l.clock.Add(int64(d)) }

// answer is what the core said to one request.
type answer struct {
	typ   wire.Type
	reply wire.Reply
	ref   wire.Refused
	err   error
}

// request sends one request on its own stream; its answer arrives on the channel
// (an error if none within 30 s).
func (l *reqLab) request(id uint64, budget time.Duration, payload string) <-chan answer {
	out := make(chan answer, 1)
	st, err := l.sess.OpenStream(context.Background())
	if err != nil {
		out <- answer{err: err}
		return out
	}
	l.t.Cleanup(func() { _ = st.Close() })
	if err := wire.Write(st, wire.TRequest, wire.Request{ID: id, Frames: frames(payload), MaxQueueAge: budget}.Encode()); err != nil {
		out <- answer{err: err}
		return out
	}
	go func() {
		_ = st.SetReadDeadline(time.Now().Add(30 * time.Second))
		typ, body, err := wire.NewReader(st, 1<<20).Next()
		a := answer{typ: typ, err: err}
		switch {
		case err != nil:
		case typ == wire.TReply:
			a.reply, a.err = wire.DecodeReply(body)
			_ = wire.Write(st, wire.TDone, wire.U64Body(id))
		case typ == wire.TRefused:
			a.ref, a.err = wire.DecodeRefused(body)
		}
		out <- a
	}()
	return out
}

func (l *reqLab) cancel(id uint64) (byte, error) {
	st, err := l.sess.OpenStream(context.Background())
	if err != nil {
		return 0, err
	}
	defer st.Close()
	if err := wire.Write(st, wire.TCancel, wire.U64Body(id)); err != nil {
		return 0, err
	}
	_ = st.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := wire.NewReader(st, 1<<10).Expect(wire.TCancelReply)
	if err != nil {
		return 0, err
	}
	r, err := wire.DecodeCancelReply(b)
	return r.Result, err
}

// metric reads one sample of the core's registry (Gather runs every collector,
// the table's gauges included).
func (l *reqLab) metric(name, label, value string) float64 {
	mfs, err := l.reg.Gather()
	if err != nil {
		l.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && !slices.ContainsFunc(m.GetLabel(), func(p *dto.LabelPair) bool { return p.GetName() == label && p.GetValue() == value }) {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func expectRefused(t *testing.T, ch <-chan answer, id uint64, code byte) {
	t.Helper()
	a := <-ch
	if a.err != nil || a.typ != wire.TRefused || a.ref.ID != id || a.ref.Code != code {
		t.Fatalf("request %d: %s %+v %v, want refused with code %d", id, a.typ, a.ref, a.err, code)
	}
}

// Issue 10 item 4 over the wire: a core whose DEALER never connects, and an edge
// that sends and cancels three times as many requests as one edge may hold (8: the
// table's last quarter is kept for other edges), each forgotten after the TTL.
// Every request is answered, and /metrics keeps answering.
func TestCoreWithoutMasterStaysResponsive(t *testing.T) {
	l := newReqLab(t, Config{Table: TableLimits{Entries: 11, TTL: time.Minute}})
	boundedly(t, 60*time.Second, "requests, cancels and /metrics of a core without master", func() {
		for round := range uint64(3) {
			var answers []<-chan answer
			for i := range uint64(8) {
				id := round*100 + i + 1
				ch := l.request(id, 0, "x")
				waitFor(t, 10*time.Second, "the request reaching the table", func() bool {
					_, entries, _, _ := l.c.table.snapshot()
					return entries == int(i)+1
				})
				if got, err := l.cancel(id); err != nil || got != wire.CancelDone {
					t.Errorf("cancel %d: %d %v", id, got, err)
					return
				}
				answers = append(answers, ch)
			}
			for i, ch := range answers {
				expectRefused(t, ch, round*100+uint64(i)+1, wire.RefusedCancelled)
			}
			if n := l.metric("salt_broker_core_requests_queued", "", ""); n != 0 {
				t.Errorf("cancelled requests still queued: %v", n)
			}
			l.advance(2 * time.Minute) // past the TTL: the sweeper forgets them
			waitFor(t, 10*time.Second, "the sweeper forgetting the cancelled requests", func() bool {
				return l.metric("salt_broker_core_dedup_entries", "", "") == 0
			})
		}
	})
	if n := l.metric("salt_broker_core_requests_total", "result", "accepted"); n != 24 {
		t.Fatalf("accepted %v, want 24", n)
	}
	if n := l.metric("salt_broker_core_cancels_total", "", ""); n != 24 {
		t.Fatalf("cancels_total %v, want 24", n)
	}
}

// fakeMaster is the master's ret port: it takes requests and answers when told.
type fakeMaster struct {
	sock zmq4.Socket
	reqs chan zmq4.Msg
	done chan struct{}
}

func startFakeMaster(t *testing.T, port int) *fakeMaster {
	ctx, cancel := context.WithCancel(context.Background())
	m := &fakeMaster{sock: zmq4.NewRouter(ctx, zmq4.WithID(zmq4.SocketIdentity("master"))), reqs: make(chan zmq4.Msg, 16), done: make(chan struct{})}
	if err := m.sock.Listen(endpoint("127.0.0.1", port)); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		defer close(m.done)
		for {
			msg, err := m.sock.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			if msg.Type == zmq4.UsrMsg {
				m.reqs <- msg
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = m.sock.Close()
		<-m.done
	})
	return m
}

// Issue 10 item 5 at the core: requests queued while the master is down expire by
// the age budget their edge gave them, refused with RefusedStale and counted; one
// already at the master is not affected, however old, and gets its reply.
func TestCoreExpiresQueuedRequestsWhileTheMasterIsDown(t *testing.T) {
	l := newReqLab(t, Config{MaxInFlight: 1, MasterTimeout: time.Hour, Table: TableLimits{TTL: time.Hour}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	wait := func(ch <-chan answer) answer {
		select {
		case a := <-ch:
			return a
		case <-ctx.Done():
			t.Fatal("no answer from the core")
			return answer{}
		}
	}

	// The master is down (its DEALER never connected): everything waits in the queue.
	keep := l.request(1, 10*time.Minute, "kept") // a return, say
	auth := l.request(2, 30*time.Second, "auth")
	auth2 := l.request(3, 30*time.Second, "auth")
	waitFor(t, 10*time.Second, "three requests queued", func() bool { return l.metric("salt_broker_core_requests_queued", "", "") == 3 })
	l.advance(time.Minute)
	for id, ch := range map[uint64]<-chan answer{2: auth, 3: auth2} {
		a := wait(ch)
		if a.err != nil || a.typ != wire.TRefused || a.ref.ID != id || a.ref.Code != wire.RefusedStale {
			t.Fatalf("request %d: %s %+v %v, want refused as stale", id, a.typ, a.ref, a.err)
		}
	}
	waitFor(t, 10*time.Second, "the stale refusals counted", func() bool {
		return l.metric("salt_broker_core_requests_total", "result", "expired") == 2
	})
	if n := l.metric("salt_broker_core_requests_queued", "", ""); n != 1 {
		t.Fatalf("queued after the stale ones left: %v, want 1", n)
	}
	if !strings.Contains(l.logs.String(), "requests refused as stale") {
		t.Fatal("the stale refusals were not logged")
	}

	// The master comes up: the kept request goes to it and holds the one slot.
	m := startFakeMaster(t, l.retPort)
	var got zmq4.Msg
	select {
	case got = <-m.reqs:
	case <-ctx.Done():
		t.Fatal("the kept request never reached the master")
	}
	if len(got.Frames) != 4 || string(got.Frames[3]) != "kept" {
		t.Fatalf("the master got %q, want the kept request", got.Frames)
	}
	late := l.request(4, 30*time.Second, "late")
	waitFor(t, 10*time.Second, "the late request queued", func() bool { return l.metric("salt_broker_core_requests_queued", "", "") == 1 })
	l.advance(20 * time.Minute) // the kept request is past its budget too, but at the master
	if a := wait(late); a.typ != wire.TRefused || a.ref.Code != wire.RefusedStale {
		t.Fatalf("late request: %s %+v %v, want refused as stale", a.typ, a.ref, a.err)
	}
	reply := zmq4.NewMsgFrom(got.Frames[0], got.Frames[1], nil, []byte("reply"))
	if err := m.sock.SendMulti(reply); err != nil {
		t.Fatal(err)
	}
	if a := wait(keep); a.err != nil || a.typ != wire.TReply || string(a.reply.Frames[0]) != "reply" {
		t.Fatalf("kept request: %s %+v %v, want its reply", a.typ, a.ref, a.err)
	}
	waitFor(t, 10*time.Second, "the third stale refusal counted", func() bool {
		return l.metric("salt_broker_core_requests_total", "result", "expired") == 3
	})
	select {
	case extra := <-m.reqs:
		t.Fatalf("a stale request reached the master: %q", extra.Frames)
	default:
	}
}

// One edge certificate flooding the table (requests, or cancels of made-up IDs,
// which leave tombstones) cannot take the room the other edges need: past three
// quarters full, a certificate over an equal share gets no more.
func TestTableFairShareBetweenEdges(t *testing.T) {
	tb := newTable(TableLimits{Entries: 100, ReplyBytes: 1 << 20, TTL: time.Minute})
	rogue := sessionKey{"rogue", 7}
	real := sessionKey{"site-a", 9}
	took := 0
	for i := range uint64(200) {
		if i%2 == 0 {
			if _, _, busy := tb.submit(reqKey{rogue, i}, frames("x"), 0); !busy {
				took++
			}
		} else if tb.cancel(reqKey{rogue, i}) == wire.CancelDone {
			took++
		}
	}
	if took != 75 {
		t.Errorf("the flooding certificate holds %d entries alone, want 75 (three quarters, then nothing past an equal share)", took)
	}
	for i := range uint64(25) {
		if _, _, busy := tb.submit(reqKey{real, i}, frames("y"), 0); busy {
			t.Fatalf("the other edge's request %d refused with the flooding one at %d entries", i, took)
		}
	}
	if _, _, busy := tb.submit(reqKey{real, 99}, frames("y"), 0); !busy {
		t.Error("a full table took one more request")
	}
	if _, _, busy := tb.submit(reqKey{rogue, 999}, frames("x"), 0); !busy {
		t.Error("the flooding certificate got an entry past its share")
	}
}

// An edge session stays bound to its certificate after its last connection closes,
// for as long as its requests may be re-sent (--dedup-ttl): another certificate
// holder who read the session ID from a log cannot take it while the edge is cut
// off and then lock the edge out. The bound on remembered sessions forgets the one
// idle longest first.
func TestSessionStaysBoundWhileItsEdgeIsAway(t *testing.T) {
	now := time.Unix(1000, 0)
	c := &Core{cfg: Config{Table: TableLimits{Entries: 2, TTL: time.Minute}}, table: newTable(TableLimits{Entries: 2, TTL: time.Minute}),
		sessions: make(map[uint64]sessionOwner)}
	c.metrics = newMetrics(c, nil)
	c.table.now = func() time.Time { return now }
	real, rogue := sessionKey{"site-a", 7}, sessionKey{"rogue", 7}
	if _, ok := c.claimSession(real); !ok {
		t.Fatal("the first hello was refused")
	}
	c.releaseSession(real) // the link is cut
	now = now.Add(30 * time.Second)
	c.forgetSessions(now)
	if holder, ok := c.claimSession(rogue); ok || holder != "site-a" {
		t.Fatalf("another certificate took a session idle for 30 s: ok %v holder %q", ok, holder)
	}
	if _, ok := c.claimSession(real); !ok {
		t.Fatal("the edge could not come back to its own session")
	}
	c.releaseSession(real)
	now = now.Add(2 * time.Minute)
	c.forgetSessions(now)
	if _, ok := c.claimSession(rogue); !ok {
		t.Fatal("a session idle past --dedup-ttl is still held")
	}
	// Bounded: a third session evicts the one idle longest.
	c.releaseSession(rogue)
	now = now.Add(time.Second)
	if _, ok := c.claimSession(sessionKey{"site-b", 8}); !ok {
		t.Fatal("second session")
	}
	if _, ok := c.claimSession(sessionKey{"site-c", 9}); !ok {
		t.Fatal("third session")
	}
	if _, held := c.sessions[7]; held || len(c.sessions) != 2 {
		t.Fatalf("sessions %v: want the idle one forgotten, 2 kept", c.sessions)
	}
}
