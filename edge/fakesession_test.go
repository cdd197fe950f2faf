package edge

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/internal/zmtp"
	"github.com/salt-broker/salt-broker/tunnel"
)

// fakeSession is an in-memory tunnel.Session, so the edge's connection code can be
// tested without sockets, certificates or a core: each stream the edge opens is a
// pair of io.Pipes, and the test plays the core on the other end, taken from
// accepted. Closing the session breaks every stream, as a dead link does.
type fakeSession struct {
	ctx      context.Context
	cancel   context.CancelCauseFunc
	accepted chan *fakeStream // the core's ends of the streams the edge opened

	mu      sync.Mutex
	streams []*fakeStream // both ends of every stream, to break when the session ends
}

// fakeAccepted bounds the streams opened and not yet taken by the test's core.
const fakeAccepted = 16

// newFakeSession returns a session that ends when the test does, at the latest
// after limit: a core side blocked on a read whose answer never comes is then
// unblocked by the broken streams and fails instead of hanging.
func newFakeSession(t *testing.T, limit time.Duration) *fakeSession {
	t.Helper()
	ctx, cancel := context.WithCancelCause(context.Background())
	s := &fakeSession{ctx: ctx, cancel: cancel, accepted: make(chan *fakeStream, fakeAccepted)}
	timer := time.AfterFunc(limit, func() { _ = s.CloseWithError("test time limit reached") })
	t.Cleanup(func() {
		timer.Stop()
		_ = s.CloseWithError("test over")
	})
	return s
}

func (s *fakeSession) OpenStream(ctx context.Context) (tunnel.Stream, error) {
	edgeEnd, coreEnd := fakePipe()
	s.mu.Lock()
	if err := context.Cause(s.ctx); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	s.streams = append(s.streams, edgeEnd, coreEnd)
	s.mu.Unlock()
	select {
	case s.accepted <- coreEnd:
		return edgeEnd, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.ctx.Done():
		return nil, context.Cause(s.ctx)
	}
}

// AcceptStream is the core's side: the edge never accepts a stream.
func (s *fakeSession) AcceptStream(ctx context.Context) (tunnel.Stream, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.ctx.Done():
		return nil, context.Cause(s.ctx)
	}
}

func (s *fakeSession) CloseWithError(reason string) error {
	s.mu.Lock()
	if s.ctx.Err() == nil {
		s.cancel(errors.New(reason))
	}
	streams := s.streams
	s.streams = nil
	s.mu.Unlock()
	err := context.Cause(s.ctx)
	for _, st := range streams {
		st.abort(err)
	}
	return nil
}

func (s *fakeSession) Context() context.Context { return s.ctx }
func (s *fakeSession) Transport() string        { return "quic" }
func (s *fakeSession) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (s *fakeSession) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4510}
}
func (s *fakeSession) PeerName() string    { return "core.test" }
func (s *fakeSession) Stats() tunnel.Stats { return tunnel.Stats{} }

// take is the core accepting the next stream the edge opens.
func (s *fakeSession) take(t *testing.T) *fakeStream {
	t.Helper()
	select {
	case st := <-s.accepted:
		return st
	case <-s.ctx.Done():
		t.Fatalf("the session ended before the edge opened a stream: %v", context.Cause(s.ctx))
		return nil
	}
}

// fakeStream is one end of an in-memory stream: it reads what the other end
// writes. Deadlines are accepted and ignored: the tests bound themselves by the
// session's time limit, and the edge closes its streams when its context ends.
type fakeStream struct {
	r *io.PipeReader
	w *io.PipeWriter
}

func fakePipe() (a, b *fakeStream) {
	ar, bw := io.Pipe()
	br, aw := io.Pipe()
	return &fakeStream{r: ar, w: aw}, &fakeStream{r: br, w: bw}
}

var errFakeStreamClosed = errors.New("fake stream closed")

func (s *fakeStream) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *fakeStream) Write(p []byte) (int, error) { return s.w.Write(p) }

// CloseWrite ends this direction: the other end reads EOF after what was written.
func (s *fakeStream) CloseWrite() error { return s.w.Close() }

// Close ends this direction and stops reading: the other end's writes fail.
func (s *fakeStream) Close() error {
	_ = s.w.Close()
	return s.r.CloseWithError(errFakeStreamClosed)
}

// abort breaks both directions with err, as a dead link does.
func (s *fakeStream) abort(err error) {
	_ = s.w.CloseWithError(err)
	_ = s.r.CloseWithError(err)
}

func (s *fakeStream) SetDeadline(time.Time) error      { return nil }
func (s *fakeStream) SetReadDeadline(time.Time) error  { return nil }
func (s *fakeStream) SetWriteDeadline(time.Time) error { return nil }

var _ tunnel.Session = (*fakeSession)(nil)
var _ tunnel.Stream = (*fakeStream)(nil)

// connTestLimit bounds each connection test: far above what it needs, far below
// the test binary's own timeout.
const connTestLimit = 10 * time.Second

// connTestEdge is an edge with what a connection reaches for (its table, cursor,
// counters, and the minion sockets on loopback ports), and no connect loop,
// dispatcher or sizer: the test drives the connection itself. It checks at the end
// that every goroutine the test started has ended.
func connTestEdge(t *testing.T) *Edge {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) }) // first registered, so it runs last
	cfg := Config{CoreAddr: "core.test:4510", Bind: "127.0.0.1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	cfg.Defaults()
	e := &Edge{cfg: cfg, log: cfg.Logger, session: 1}
	e.pool = newPool(e)
	e.reqs = newReqTable(e)
	e.metrics = newMetrics(e, nil)
	var err error
	if e.cursor, err = loadCursor(""); err != nil {
		t.Fatal(err)
	}
	if e.router, err = zmtp.ListenRouter("127.0.0.1:0", cfg.ZMTP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.router.Close() })
	if e.pub, err = zmtp.ListenPub("127.0.0.1:0", cfg.ZMTP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.pub.Close() })
	return e
}

// testConn is a connection of e on sess, as the handshake leaves it (without the
// control stream: these tests are about what runs beside it).
func testConn(e *Edge, sess tunnel.Session, slot uint32) *conn {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &conn{e: e, outcomes: e, sess: sess, ctx: ctx, cancel: cancel, slot: slot, log: e.log.With("conn", slot)}
}

// counterOf reads a counter of the edge's metrics.
func counterOf(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// recordedOutcomes is a requestOutcomes that only records what the connection
// reported, so a test sees exactly which outcome the connection chose, without
// the table's or the minion socket's side of it.
type recordedOutcomes struct {
	mu        sync.Mutex
	delivered map[uint64][][]byte
	refusals  []wire.Refused
	requeued  []uint64
	cancels   int           // resolveRetry and retryCancelLater calls
	reported  chan struct{} // one token per report, so a test waits instead of polling
}

func newRecordedOutcomes() *recordedOutcomes {
	return &recordedOutcomes{delivered: make(map[uint64][][]byte), reported: make(chan struct{}, fakeAccepted)}
}

func (o *recordedOutcomes) note(f func()) {
	o.mu.Lock()
	f()
	o.mu.Unlock()
	select {
	case o.reported <- struct{}{}:
	default: // a test that stopped reading reads the records themselves
	}
}

func (o *recordedOutcomes) deliver(r *edgeReq, reply [][]byte) {
	o.note(func() { o.delivered[r.id] = reply })
}
func (o *recordedOutcomes) refused(_ *edgeReq, ref wire.Refused) {
	o.note(func() { o.refusals = append(o.refusals, ref) })
}
func (o *recordedOutcomes) requeue(r *edgeReq) {
	o.note(func() { o.requeued = append(o.requeued, r.id) })
}
func (o *recordedOutcomes) resolveRetry(*edgeReq, byte) { o.note(func() { o.cancels++ }) }
func (o *recordedOutcomes) retryCancelLater(*edgeReq)   { o.note(func() { o.cancels++ }) }

// waitReport waits for the next report, at most the session's time limit.
func (o *recordedOutcomes) waitReport(t *testing.T, s *fakeSession) {
	t.Helper()
	select {
	case <-o.reported:
	case <-s.ctx.Done():
		t.Fatalf("the session ended before the connection reported an outcome: %v", context.Cause(s.ctx))
	}
}

// counts reads how many of each outcome were reported.
func (o *recordedOutcomes) counts() (delivered, refused, requeued, cancels int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.delivered), len(o.refusals), len(o.requeued), o.cancels
}

var _ requestOutcomes = (*recordedOutcomes)(nil)
