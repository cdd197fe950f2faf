package core

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/tunnel"
)

const (
	helloTimeout   = 10 * time.Second
	controlTimeout = 60 * time.Second // the edge pings several times a second
	doneTimeout    = 30 * time.Second
	// pubBatchBuf is the publication stream's initial write buffer: a batch of
	// ordinary publications fits without growing it.
	pubBatchBuf = 64 << 10
	pubBatch    = 256
)

// edgeConn is one tunnel session from an edge.
type edgeConn struct {
	c    *Core
	sess tunnel.Session
	base *slog.Logger // until the hello names the edge session

	// The hello happens once per connection: the first control stream claims it,
	// whatever other streams a misbehaving edge opens at the same time.
	helloClaimed atomic.Bool
	helloDone    chan struct{}            // closed once peer is set
	peer         atomic.Pointer[edgePeer] // set once, by the hello
	cursor       atomic.Uint64

	bulk tunnel.Gate // large replies in flight on this connection, in turn (gate.go)

	series *edgeSeries // its edge's per-edge counters (edgeseries.go)
}

// edgePeer is what the hello established: which edge session this connection
// carries, bound to the certificate that presented it.
type edgePeer struct {
	hello wire.Hello
	key   sessionKey
	log   *slog.Logger
}

// said returns the edge session once the hello is done, else nil.
func (e *edgeConn) said() *edgePeer { return e.peer.Load() }

// logger is the connection's logger, naming the edge session once it is known.
func (e *edgeConn) logger() *slog.Logger {
	if p := e.said(); p != nil {
		return p.log
	}
	return e.base
}

func (c *Core) serveEdge(ctx context.Context, sess tunnel.Session) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	e := &edgeConn{
		c:         c,
		sess:      sess,
		base:      c.log.With("edge", sess.PeerName(), "remote", sess.RemoteAddr(), "transport", sess.Transport()),
		helloDone: make(chan struct{}),
		series:    c.metrics.perEdge.attach(sess.PeerName(), c.table.now()),
	}
	c.mu.Lock()
	c.edges[e] = struct{}{}
	c.mu.Unlock()
	c.metrics.edges.Inc()
	admitted := c.admitAfterReload(e) // a reload may have revoked it since its handshake (reload.go)
	defer func() {
		c.mu.Lock()
		delete(c.edges, e)
		c.mu.Unlock()
		c.metrics.edges.Dec()
		c.metrics.perEdge.detach(e.series, e.cursor.Load(), c.table.now())
		if p := e.said(); p != nil {
			c.releaseSession(p.key)
		}
	}()
	e.base.Debug("edge connection accepted")
	if !admitted {
		return
	}

	var streams sync.WaitGroup
	defer streams.Wait()
	defer cancel()
	stopClose := context.AfterFunc(ctx, func() { _ = sess.CloseWithError("core closing the connection") })
	defer stopClose()
	for {
		st, err := sess.AcceptStream(ctx)
		if err != nil {
			if ctx.Err() == nil {
				e.logger().Info("edge connection ended", "reason", context.Cause(sess.Context()))
			}
			return
		}
		streams.Go(func() {
			err := e.serveStream(ctx, st)
			var pe *protocolError
			if errors.As(err, &pe) {
				c.metrics.protocolErrors.WithLabelValues(pe.kind).Inc()
			}
			if err != nil && ctx.Err() == nil && sess.Context().Err() == nil {
				e.logger().Warn("edge stream failed; closing that stream", "err", err)
			}
		})
	}
}

// protocolError is an edge breaking the tunnel protocol on one stream: that stream
// is closed, counted by kind, and the rest of the connection carries on.
type protocolError struct {
	kind string // the metric label
	err  error
}

func (p *protocolError) Error() string { return p.err.Error() }
func (p *protocolError) Unwrap() error { return p.err }

// Kinds of protocol errors, each counted in salt_broker_core_tunnel_protocol_errors_total.
var protocolErrorKinds = []string{"bad_record", "unexpected_record", "before_hello", "bad_hello", "second_hello",
	"bad_control", "bad_subscribe", "bad_request", "bad_cancel"}

func protoErr(kind string, format string, args ...any) error {
	return &protocolError{kind: kind, err: fmt.Errorf(format, args...)}
}

func (e *edgeConn) serveStream(ctx context.Context, st tunnel.Stream) error {
	defer st.Close()
	// Close the stream when the session's work is over, so blocked reads and writes return.
	stop := context.AfterFunc(ctx, func() { _ = st.Close() })
	defer stop()

	// The first record may be a large request on a slow link: it is cut only when no
	// byte of it arrives for helloTimeout, never for taking long.
	first := tunnel.NewIdleReader(st, helloTimeout, false)
	rd := wire.NewReader(first, e.c.maxRecord())
	typ, body, err := rd.Next()
	first.Stop() // later records set their own deadlines
	if errors.Is(err, wire.ErrTooLarge) && typ == wire.TRequest {
		id := wire.NewDecoder(body[:min(8, len(body))]).U64()
		e.countRequest("too_large")
		return e.write(st, wire.TRefused, wire.Refused{ID: id, Code: wire.RefusedTooLarge, Reason: "request larger than the core's --max-message-size"}.Encode())
	}
	if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrTooLarge) {
		return protoErr("bad_record", "read the stream's first record: %w", err)
	}
	if err != nil {
		return fmt.Errorf("read the stream's first record: %w", err)
	}
	_ = st.SetReadDeadline(time.Time{})
	if typ == wire.THello {
		return e.serveControl(st, rd, body)
	}
	switch typ {
	case wire.TSubscribe, wire.TRequest, wire.TCancel:
	default:
		return protoErr("unexpected_record", "unexpected %s record opening a stream: %w", typ, wire.ErrMalformed)
	}
	peer := e.waitHello(ctx)
	if peer == nil {
		if ctx.Err() != nil {
			return nil
		}
		return protoErr("before_hello", "%s stream without a hello on this connection: %w", typ, wire.ErrMalformed)
	}
	switch typ {
	case wire.TSubscribe:
		return e.servePubs(ctx, st, body)
	case wire.TRequest:
		return e.serveRequest(ctx, st, rd, peer, body)
	default:
		return e.serveCancel(st, peer, body)
	}
}

// waitHello returns the edge session once the hello is done, or nil if it is not
// done within helloTimeout.
func (e *edgeConn) waitHello(ctx context.Context) *edgePeer {
	t := time.NewTimer(helloTimeout)
	defer t.Stop()
	select {
	case <-e.helloDone:
		return e.peer.Load()
	case <-ctx.Done():
		return nil
	case <-t.C:
		return nil
	}
}

// refuse ends the whole connection with the edge told why: it cannot be served.
func (e *edgeConn) refuse(st tunnel.Stream, reason, msg string, logArgs ...any) {
	e.c.metrics.refusedEdges.WithLabelValues(reason).Inc()
	_ = e.write(st, wire.TReject, []byte(msg))
	e.base.Error("edge refused", append([]any{"reason", msg}, logArgs...)...)
	_ = e.sess.CloseWithError(msg)
}

// serveControl answers the hello, then pings and cursor acks for the session's life.
func (e *edgeConn) serveControl(st tunnel.Stream, rd *wire.Reader, body []byte) error {
	if !e.helloClaimed.CompareAndSwap(false, true) {
		return protoErr("second_hello", "second hello on one connection: %w", wire.ErrMalformed)
	}
	h, err := wire.DecodeHello(body)
	if err != nil {
		// Nothing on this connection can be served without a hello.
		_ = e.sess.CloseWithError("malformed hello")
		return protoErr("bad_hello", "decode hello: %w", err)
	}
	if h.Version != wire.Version {
		e.refuse(st, "version", fmt.Sprintf("protocol version %d is not supported by this core (it speaks %d): upgrade the older side", h.Version, wire.Version))
		return nil
	}
	key := sessionKey{cert: e.sess.PeerName(), session: h.EdgeSession}
	if holder, ok := e.c.claimSession(key); !ok {
		e.refuse(st, "session_of_another_certificate",
			"edge session is held by another certificate: each edge must have its own certificate and session",
			"edge_session", fmt.Sprintf("%016x", h.EdgeSession), "held_by", holder)
		return nil
	}
	peer := &edgePeer{hello: h, key: key,
		log: e.base.With("edge_name", h.EdgeName, "edge_session", fmt.Sprintf("%016x", h.EdgeSession), "conn", h.Conn)}
	e.cursor.Store(h.PubCursor)
	e.peer.Store(peer)
	close(e.helloDone)
	log := peer.log
	if err := e.write(st, wire.THelloAck, wire.HelloAck{Version: wire.Version, CoreName: e.c.cfg.Name, CoreEpoch: e.c.epoch, HeadSeq: e.c.ring.Head()}.Encode()); err != nil {
		return fmt.Errorf("answer hello: %w", err)
	}
	log.Info("edge connected", "pub_cursor", h.PubCursor, "cursor_epoch", h.CoreEpoch, "pending_requests", h.Pending)
	e.c.supersede(e, key, h.Conn)
	e.c.warnSharedName(e, peer)
	for {
		_ = st.SetReadDeadline(time.Now().Add(controlTimeout))
		typ, body, err := rd.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrTooLarge) {
				return protoErr("bad_control", "control stream: %w", err)
			}
			return fmt.Errorf("control stream: %w", err)
		}
		switch typ {
		case wire.TPing:
			if err := e.write(st, wire.TPong, body); err != nil {
				return fmt.Errorf("answer ping: %w", err)
			}
		case wire.TAck:
			v, err := wire.DecodeU64(body)
			if err != nil {
				return protoErr("bad_control", "decode ack: %w", err)
			}
			e.cursor.Store(v)
		default:
			return protoErr("bad_control", "unexpected %s record on the control stream: %w", typ, wire.ErrMalformed)
		}
	}
}

// claimSession binds an edge session to the certificate of a connection that says
// hello with it. The first certificate to use a session holds it while any of its
// connections is open and for --dedup-ttl after the last one closed (as long as
// the core may still see its requests re-sent): a hello with that session from
// another certificate is refused — an edge impersonating another (the session is
// logged), or two edges sharing one session file, and either way not to be served.
// Holding it past the last connection is what keeps an impersonator from taking
// the session while its edge is cut off and then locking the edge out.
func (c *Core) claimSession(k sessionKey) (holder string, ok bool) {
	now := c.table.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	o, known := c.sessions[k.session]
	if known && o.cert != k.cert && (o.conns > 0 || now.Sub(o.idleSince) < c.cfg.Table.TTL) {
		return o.cert, false
	}
	if !known || o.cert != k.cert {
		o = sessionOwner{cert: k.cert}
		if !known && len(c.sessions) >= c.maxSessions() {
			c.forgetOldestSessionLocked(now)
		}
	}
	o.conns++
	c.sessions[k.session] = o
	return "", true
}

func (c *Core) releaseSession(k sessionKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	o, known := c.sessions[k.session]
	if !known || o.cert != k.cert {
		return
	}
	if o.conns--; o.conns <= 0 {
		o.conns, o.idleSince = 0, c.table.now()
	}
	c.sessions[k.session] = o
}

// maxSessions bounds the sessions remembered: one per request the table may hold
// is far more than real edges use, and keeps an edge minting sessions bounded.
func (c *Core) maxSessions() int { return max(c.cfg.Table.Entries, 1) }

// forgetSessions drops the sessions idle for longer than --dedup-ttl; the
// sweeper calls it every second.
func (c *Core) forgetSessions(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, o := range c.sessions {
		if o.conns == 0 && now.Sub(o.idleSince) >= c.cfg.Table.TTL {
			delete(c.sessions, id)
		}
	}
}

// forgetOldestSessionLocked makes room for a new session when the bound is reached
// (an edge is minting sessions): the one idle longest goes first. Should none be
// idle, the map grows past its bound by the connections open, which are bounded
// by the listener.
func (c *Core) forgetOldestSessionLocked(now time.Time) {
	var oldest uint64
	var found bool
	var at time.Time
	for id, o := range c.sessions {
		if o.conns == 0 && (!found || o.idleSince.Before(at)) {
			oldest, at, found = id, o.idleSince, true
		}
	}
	if found {
		delete(c.sessions, oldest)
		c.metrics.sessionsForgotten.Inc()
	}
}

// sessionOwner is the certificate holding an edge session, how many of its
// connections are open, and since when none is.
type sessionOwner struct {
	cert      string
	conns     int
	idleSince time.Time
}

// supersede closes the older connection in e's slot of its edge session. An edge
// runs a pool of connections in one session (wire.Hello.Conn), and says hello in a
// slot only once the connection it had there is dead or left behind; kept until
// its idle timeout, that one's requests would wait on nobody (and its publication
// stream, if it had it, would run on into the ring). The session's other
// connections are its pool: they stay.
func (c *Core) supersede(e *edgeConn, key sessionKey, slot uint32) {
	var old []*edgeConn
	c.mu.Lock()
	for o := range c.edges {
		if p := o.said(); o != e && p != nil && p.key == key && p.hello.Conn == slot {
			old = append(old, o)
		}
	}
	c.mu.Unlock()
	for _, o := range old {
		o.logger().Info("closing this edge's previous connection in this slot: it has connected again")
		_ = o.sess.CloseWithError("superseded by a newer connection of this edge")
	}
}

// warnSharedName warns when another session of e's certificate name is connected:
// two edges presenting one certificate (a copied key), each served, each unaware
// of the other. An edge restarted after a crash may also overlap its previous
// session for a moment, until the core times that one out. At most once a minute
// per name.
func (c *Core) warnSharedName(e *edgeConn, p *edgePeer) {
	var other *edgeConn
	var op *edgePeer
	c.mu.Lock()
	for o := range c.edges {
		if q := o.said(); o != e && q != nil && q.key.cert == p.key.cert && q.key.session != p.key.session && o.sess.Context().Err() == nil {
			other, op = o, q
			break
		}
	}
	c.mu.Unlock()
	if other == nil {
		return
	}
	if ok, n := c.dupNames.Allow(p.key.cert, time.Now()); ok {
		args := []any{"cert_name", p.key.cert,
			"remote", e.sess.RemoteAddr(), "edge_name", p.hello.EdgeName, "edge_session", fmt.Sprintf("%016x", p.key.session),
			"other_remote", other.sess.RemoteAddr(), "other_edge_name", op.hello.EdgeName, "other_edge_session", fmt.Sprintf("%016x", op.key.session)}
		if n > 0 {
			args = append(args, "similar_not_logged", n)
		}
		c.log.Warn("two edge sessions with one certificate name are connected: each edge should have its own certificate (or this edge restarted and its previous connection has not timed out yet)", args...)
	}
}

// write sends one record with an idle deadline: it fails only when nothing went
// through for WriteTimeout, however long the whole record takes on a slow link.
func (e *edgeConn) write(st tunnel.Stream, t wire.Type, body []byte) error {
	_, err := tunnel.WriteIdle(st, wire.Append(make([]byte, 0, len(body)+8), t, body), e.c.cfg.WriteTimeout)
	return err
}

// startCursor decides where an edge's publication stream resumes.
//   - Same core epoch: right after the edge's cursor (a gap is reported if evicted).
//   - Another epoch (this core restarted): everything this core has numbered, from 1;
//     what the master published while no core was subscribed is gone (Salt semantics).
//   - No epoch (a fresh edge): from now on; an edge that never saw a job has none to resume.
func (e *edgeConn) startCursor(s wire.Subscribe) (cursor uint64, why string) {
	switch s.CoreEpoch {
	case e.c.epoch:
		return s.Cursor, "resume"
	case 0:
		return e.c.ring.Head(), "new edge"
	default:
		return 0, "core restarted"
	}
}

// servePubs streams publications from the edge's cursor for the session's life.
func (e *edgeConn) servePubs(ctx context.Context, st tunnel.Stream, body []byte) error {
	sub, err := wire.DecodeSubscribe(body)
	if err != nil {
		return protoErr("bad_subscribe", "decode subscribe: %w", err)
	}
	cursor, why := e.startCursor(sub)
	e.logger().Info("publication stream started", "from_seq", cursor+1, "why", why, "head_seq", e.c.ring.Head())
	// Tell the edge where this stream starts, in this core's epoch.
	if err := e.write(st, wire.TSubscribe, wire.Subscribe{CoreEpoch: e.c.epoch, Cursor: cursor}.Encode()); err != nil {
		return fmt.Errorf("answer subscribe: %w", err)
	}
	buf := make([]byte, 0, pubBatchBuf)
	for {
		batch, gap, wait := e.c.ring.read(cursor, pubBatch)
		buf = buf[:0]
		if gap != nil {
			n := gap.To - gap.From + 1
			e.logger().Warn("publications lost: they left the replay ring before this edge could take them; raise --ring-* limits if this edge's outages are longer",
				"from_seq", gap.From, "to_seq", gap.To, "count", n)
			e.c.metrics.gapPubs.Add(float64(n))
			buf = wire.Append(buf, wire.TGap, gap.Encode())
			cursor = gap.To
		}
		for _, ent := range batch {
			buf = wire.Append(buf, wire.TPub, wire.Pub{Seq: ent.seq, Frames: ent.frames}.Encode())
			cursor = ent.seq
		}
		if len(buf) > 0 {
			if _, err := tunnel.WriteIdle(st, buf, e.c.cfg.WriteTimeout); err != nil {
				return fmt.Errorf("write publications: %w", err)
			}
			e.c.metrics.pubsOut.Add(float64(len(batch)))
		}
		if wait != nil {
			select {
			case <-wait:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// serveRequest takes one request, waits for its reply (from the master, or the cache
// when this is a re-send), returns it and waits for the edge to confirm.
func (e *edgeConn) serveRequest(ctx context.Context, st tunnel.Stream, rd *wire.Reader, peer *edgePeer, body []byte) error {
	req, err := wire.DecodeRequest(body)
	if err != nil {
		return protoErr("bad_request", "decode request: %w", err)
	}
	if wire.Size(req.Frames) > e.c.cfg.MaxMessageSize {
		e.countRequest("too_large")
		return e.write(st, wire.TRefused, wire.Refused{ID: req.ID, Code: wire.RefusedTooLarge, Reason: "request larger than the core's --max-message-size"}.Encode())
	}
	key := reqKey{sess: peer.key, id: req.ID}
	p, dup, busy := e.c.table.submit(key, wire.CloneFrames(req.Frames), req.MaxQueueAge)
	switch {
	case busy:
		e.countRequest("busy")
		// A full table refuses every edge's requests at once: one line a second.
		e.c.warns.Log(e.logger(), slog.LevelWarn, "table_full", "request refused: the core's request table is full (its entries, its fair share for this edge, or the bytes queued for the master); the master is slow or unreachable, or an edge floods it; the minion will retry",
			"entries", e.c.cfg.Table.Entries, "queue_bytes", e.c.table.limits.QueueBytes)
		return e.write(st, wire.TRefused, wire.Refused{ID: req.ID, Code: wire.RefusedBusy, Reason: "core request table full"}.Encode())
	case dup:
		e.countRequest("resent")
	default:
		e.countRequest("accepted")
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil // the edge re-sends it on its next connection
	}
	reply, refusal := e.c.table.result(p)
	if refusal != nil {
		e.series.answered(answerRefused)
		return e.write(st, wire.TRefused, refusal.Encode())
	}
	rec := wire.Append(nil, wire.TReply, wire.Reply{ID: req.ID, Frames: reply}.Encode())
	// A large reply waits for its turn on this connection; the budget is given back
	// once the edge confirmed it (or did not), so it bounds what is on its way.
	release, err := e.admitReply(ctx, len(rec))
	if err != nil {
		return nil // the edge went away; it re-sends the request on its next connection
	}
	defer release()
	if _, err := tunnel.WriteIdle(st, rec, e.c.cfg.WriteTimeout); err != nil {
		return fmt.Errorf("write reply: %w", err)
	}
	e.series.answered(answerReply)
	_ = st.SetReadDeadline(time.Now().Add(doneTimeout))
	b, err := rd.Expect(wire.TDone)
	if err != nil {
		e.unconfirmed(req.ID, "missing", err)
		return nil
	}
	if id, err := wire.DecodeU64(b); err != nil || id != req.ID {
		e.unconfirmed(req.ID, "malformed", fmt.Errorf("done record for request %d: %w", id, wire.ErrMalformed))
		return nil
	}
	e.c.table.delivered(key)
	_ = st.CloseWrite()
	return nil
}

// countRequest counts a request from the edge by result, in all and for its edge.
func (e *edgeConn) countRequest(result string) {
	e.c.metrics.requests.WithLabelValues(result).Inc()
	e.series.request(result)
}

// serveCancel withdraws a request that has not reached the master yet (the edge
// does this when a minion's own retry replaced it).
func (e *edgeConn) serveCancel(st tunnel.Stream, peer *edgePeer, body []byte) error {
	id, err := wire.DecodeU64(body)
	if err != nil {
		return protoErr("bad_cancel", "decode cancel: %w", err)
	}
	res := e.c.table.cancel(reqKey{sess: peer.key, id: id})
	return e.write(st, wire.TCancelReply, wire.CancelReply{ID: id, Result: res}.Encode())
}
