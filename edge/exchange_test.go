package edge

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
)

// sentRequest is a minion's return in e's table, taken by the dispatcher to send.
func sentRequest(t *testing.T, e *Edge) *edgeReq {
	t.Helper()
	r := ret("sock-1", "minion-1", 100)
	r.envelope = [][]byte{[]byte("sock-1"), {}}
	r.body = [][]byte{[]byte("_return load")}
	if got := e.reqs.add(r); got != accepted {
		t.Fatalf("table refused the request: %s", got)
	}
	sent := e.reqs.takeWaiting(time.Now())
	if len(sent) != 1 || sent[0] != r {
		t.Fatalf("the dispatcher took %d requests, want the one added", len(sent))
	}
	return r
}

// readRequest is the core reading the request record the edge opens a stream with.
func readRequest(t *testing.T, rd *wire.Reader) wire.Request {
	t.Helper()
	body, err := rd.Expect(wire.TRequest)
	if err != nil {
		t.Fatalf("core: read request: %v", err)
	}
	req, err := wire.DecodeRequest(body)
	if err != nil {
		t.Fatalf("core: decode request: %v", err)
	}
	return req
}

// replyAndReadDone is the core answering req and reading the edge's done record,
// which lets it forget the reply (DESIGN §3.2).
func replyAndReadDone(t *testing.T, st *fakeStream, rd *wire.Reader, id uint64) {
	t.Helper()
	if err := wire.Write(st, wire.TReply, wire.Reply{ID: id, Frames: [][]byte{[]byte("master's answer")}}.Encode()); err != nil {
		t.Fatalf("core: write reply: %v", err)
	}
	body, err := rd.Expect(wire.TDone)
	if err != nil {
		t.Fatalf("core: no done record after the reply: %v", err)
	}
	if got, err := wire.DecodeU64(body); err != nil || got != id {
		t.Fatalf("core: done record for %d (%v), want %d", got, err, id)
	}
}

func replies(t *testing.T, e *Edge, result string) float64 {
	t.Helper()
	return counterOf(t, e.metrics.replies.WithLabelValues(result))
}

// The reply reaches the request's minion (here one gone already: minion_gone), the
// request leaves the table, and the core gets the done record for its ID.
func TestExchangeDeliversReplyAndSaysDone(t *testing.T) {
	e := connTestEdge(t)
	s := newFakeSession(t, connTestLimit)
	c := testConn(e, s, 0)
	t.Cleanup(func() { c.cancel(errors.New("test over")) })
	r := sentRequest(t, e)

	done := make(chan error, 1)
	go func() { done <- c.exchange(r) }()
	st := s.take(t)
	rd := wire.NewReader(st, 1<<20)
	req := readRequest(t, rd)
	if req.ID != r.id || len(req.Frames) != 1 || !bytes.Equal(req.Frames[0], r.body[0]) {
		t.Fatalf("core got request %d %q, want %d %q", req.ID, req.Frames, r.id, r.body)
	}
	if req.MaxQueueAge <= 0 || req.MaxQueueAge > e.cfg.RequestMaxAge {
		t.Errorf("request carries max queue age %s, want its class's remaining age (≤ %s)", req.MaxQueueAge, e.cfg.RequestMaxAge)
	}
	replyAndReadDone(t, st, rd, r.id)
	if err := <-done; err != nil {
		t.Fatalf("exchange: %v", err)
	}
	if _, _, err := rd.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("after the done record the edge's side should end; read %v", err)
	}
	if n := e.reqs.size(); n != 0 {
		t.Errorf("table holds %d requests after the reply, want 0", n)
	}
	if got := replies(t, e, "minion_gone"); got != 1 {
		t.Errorf("replies{minion_gone} = %v, want 1 (the reply was delivered to a socket that had closed)", got)
	}
}

// A refusal ends the request (its minion's own retry takes over), and nothing is
// re-sent: no done record either, the core keeps no reply to forget.
func TestExchangePassesRefusalOn(t *testing.T) {
	e := connTestEdge(t)
	s := newFakeSession(t, connTestLimit)
	c := testConn(e, s, 0)
	t.Cleanup(func() { c.cancel(errors.New("test over")) })
	r := sentRequest(t, e)

	done := make(chan error, 1)
	go func() { done <- c.exchange(r) }()
	st := s.take(t)
	rd := wire.NewReader(st, 1<<20)
	readRequest(t, rd)
	ref := wire.Refused{ID: r.id, Code: wire.RefusedBusy, Reason: "core tables full"}
	if err := wire.Write(st, wire.TRefused, ref.Encode()); err != nil {
		t.Fatalf("core: write refusal: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("exchange returned %v for a refusal; an error would re-send the request", err)
	}
	if typ, _, err := rd.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("after a refusal the edge sent %s (%v), want its side ended", typ, err)
	}
	if n := e.reqs.size(); n != 0 {
		t.Errorf("table holds %d requests after the refusal, want 0", n)
	}
	if got := replies(t, e, "refused"); got != 1 {
		t.Errorf("replies{refused} = %v, want 1", got)
	}
	if got := replies(t, e, "minion_gone") + replies(t, e, "delivered"); got != 0 {
		t.Errorf("a refused request counted %v replies", got)
	}
	if waiting := e.reqs.takeWaiting(time.Now()); len(waiting) != 0 {
		t.Errorf("a refused request was queued to be sent again")
	}
}

// A connection that dies with a request on its way puts the request back in line,
// and the next connection sends it again under the same ID, so the core's dedup
// table answers it once (docs/guarantees.md).
func TestDeadConnectionRequeuesRequestUnderSameID(t *testing.T) {
	e := connTestEdge(t)
	s1 := newFakeSession(t, connTestLimit)
	c1 := testConn(e, s1, 0)
	ran1 := make(chan error, 1)
	go func() { ran1 <- c1.run() }()
	r := sentRequest(t, e)
	c1.goRequest(r)

	st := s1.take(t)
	first := readRequest(t, wire.NewReader(st, 1<<20))
	_ = s1.CloseWithError("link died")
	if reason := <-ran1; reason == nil {
		t.Fatal("run ended without a reason")
	}
	if n := c1.inflight.Load(); n != 0 {
		t.Errorf("the dead connection still counts %d requests in flight", n)
	}
	again := e.reqs.takeWaiting(time.Now())
	if len(again) != 1 || again[0] != r {
		t.Fatalf("after the connection died %d requests were waiting, want the one it carried", len(again))
	}

	s2 := newFakeSession(t, connTestLimit)
	c2 := testConn(e, s2, 0)
	ran2 := make(chan error, 1)
	go func() { ran2 <- c2.run() }()
	c2.goRequest(again[0])
	st2 := s2.take(t)
	rd2 := wire.NewReader(st2, 1<<20)
	second := readRequest(t, rd2)
	if second.ID != first.ID {
		t.Fatalf("re-sent under ID %d, first sent as %d", second.ID, first.ID)
	}
	replyAndReadDone(t, st2, rd2, second.ID)
	_ = s2.CloseWithError("test over")
	<-ran2
	if n := e.reqs.size(); n != 0 {
		t.Errorf("table holds %d requests after the reply on the second connection", n)
	}
	if got := replies(t, e, "minion_gone"); got != 1 {
		t.Errorf("replies{minion_gone} = %v, want 1", got)
	}
}

// A reply larger than the edge's --max-message-size would come back the same on
// every re-send: the connection reports it as refused (too large), never as a
// delivery or a requeue, and still tells the core it may forget the reply.
func TestExchangeReportsTooLargeReplyAsRefused(t *testing.T) {
	e := connTestEdge(t)
	e.cfg.MaxMessageSize = 1 << 10
	s := newFakeSession(t, connTestLimit)
	c := testConn(e, s, 0)
	rec := newRecordedOutcomes()
	c.outcomes = rec
	t.Cleanup(func() { c.cancel(errors.New("test over")) })
	r := sentRequest(t, e)

	done := make(chan error, 1)
	go func() { done <- c.exchange(r) }()
	st := s.take(t)
	rd := wire.NewReader(st, 1<<20)
	readRequest(t, rd)
	big := bytes.Repeat([]byte{'x'}, e.cfg.MaxMessageSize+wire.FrameSlack)
	if err := wire.Write(st, wire.TReply, wire.Reply{ID: r.id, Frames: [][]byte{big}}.Encode()); err != nil {
		t.Fatalf("core: write reply: %v", err)
	}
	body, err := rd.Expect(wire.TDone)
	if err != nil {
		t.Fatalf("core: no done record after the oversized reply: %v", err)
	}
	if got, err := wire.DecodeU64(body); err != nil || got != r.id {
		t.Fatalf("core: done record for %d (%v), want %d", got, err, r.id)
	}
	if err := <-done; err != nil {
		t.Fatalf("exchange returned %v; an error would re-send the request", err)
	}
	delivered, refused, requeued, cancels := rec.counts()
	if delivered != 0 || refused != 1 || requeued != 0 || cancels != 0 {
		t.Fatalf("reported %d deliveries, %d refusals, %d requeues, %d cancels; want one refusal only", delivered, refused, requeued, cancels)
	}
	if ref := rec.refusals[0]; ref.ID != r.id || ref.Code != wire.RefusedTooLarge {
		t.Errorf("refusal %d code %d, want %d code %d (too large)", ref.ID, ref.Code, r.id, wire.RefusedTooLarge)
	}
}

// A request stream that fails while the connection lives (here the core ends it
// without an answer) leaves the outcome unknown: the connection reports a requeue,
// once, and neither a delivery nor a refusal.
func TestFailedStreamOnLiveConnectionReportsRequeue(t *testing.T) {
	e := connTestEdge(t)
	s := newFakeSession(t, connTestLimit)
	c := testConn(e, s, 0)
	rec := newRecordedOutcomes()
	c.outcomes = rec
	t.Cleanup(func() {
		c.cancel(errors.New("test over"))
		c.wg.Wait()
	})
	r := sentRequest(t, e)

	c.goRequest(r)
	st := s.take(t)
	readRequest(t, wire.NewReader(st, 1<<20))
	_ = st.Close()
	rec.waitReport(t, s)
	if c.ctx.Err() != nil {
		t.Fatal("the connection ended; this test is about a live one")
	}
	delivered, refused, requeued, cancels := rec.counts()
	if delivered != 0 || refused != 0 || requeued != 1 || cancels != 0 || rec.requeued[0] != r.id {
		t.Fatalf("reported %d deliveries, %d refusals, requeues %v, %d cancels; want request %d requeued once", delivered, refused, rec.requeued, cancels, r.id)
	}
}
