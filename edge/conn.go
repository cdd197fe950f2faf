package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/salt-broker/salt-broker/internal/waitctx"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/tunnel"
)

// conn is one live tunnel connection to the core and everything running on it.
type conn struct {
	e      *Edge
	sess   tunnel.Session
	ctx    context.Context
	cancel context.CancelCauseFunc
	log    *slog.Logger
	ack    wire.HelloAck
	wg     sync.WaitGroup

	lastPong  atomic.Int64 // unix nanos
	rtt       atomic.Int64 // nanos
	pingsSent atomic.Uint64
	pongs     atomic.Uint64 // pings answered (pongs come back in order)

	// bulk bounds the bytes of large requests (uploads) being written on this
	// connection, so they go in turn (tunnel.Gate). Budget: uploadInFlightBytes.
	bulk tunnel.Gate

	handover tunnel.Session // set by probeQUIC before it ends the connection

	// Its place in the pool (pool.go).
	slot        uint32      // wire.Hello.Conn
	anchor      bool        // the connect loop's connection, which the sizer never retires
	retiring    atomic.Bool // the sizer is taking it out: no new requests, it ends once they are answered
	carriesPubs atomic.Bool // the publication stream runs on it
	// What it carries now, for the least-loaded choice and the sizer: requests
	// awaiting their reply, their bytes, and the most bytes at once since the
	// sizer last looked.
	inflight, inflightBytes, peakBytes atomic.Int64
	lossRate                           atomic.Uint64 // float64 bits: the last interval's loss rate, for status and metrics

	goMu    sync.Mutex // orders goWork against run's final wg.Wait
	stopped bool       // run is waiting for its goroutines: start no more
}

// goWork starts f on this connection unless the connection is ending; false means
// the caller must hand its work to the next connection.
func (c *conn) goWork(f func()) bool {
	c.goMu.Lock()
	defer c.goMu.Unlock()
	if c.stopped {
		return false
	}
	c.wg.Go(f)
	return true
}

// Large requests (above bulkThreshold) are written in turn, at most
// uploadInFlightBytes at once (at least one); small ones are never held back. The
// core bounds its large replies the same way (--bulk-in-flight-bytes); the edge's
// budget is fixed, since requests that large are rare (a minion's file upload).
const (
	bulkThreshold       = 64 << 10
	uploadInFlightBytes = 4 << 20
)

var (
	errStalled    = errors.New("connection stalled")
	errBackToQUIC = errors.New("QUIC reachable again: moving the session back from TCP")
	errRetired    = errors.New("taken out of the pool")
)

// connectLoop keeps one connection to the core up for as long as ctx lives: the
// pool's anchor. The sizer adds others beside it when one is not enough (sizer.go).
func (e *Edge) connectLoop(ctx context.Context) {
	var lastUp time.Time
	failures := 0
	lastTransport := ""
	var next tunnel.Session // a QUIC session the TCP connection's prober found
	defer func() {
		if next != nil {
			_ = next.CloseWithError("edge stopping")
		}
	}()
	// While the core cannot be reached the log says so every outage.every (outage.go).
	remindCtx, stopReminders := context.WithCancel(ctx)
	var reminders sync.WaitGroup
	reminders.Go(func() { e.outage.remindLoop(remindCtx) })
	defer func() {
		stopReminders()
		reminders.Wait()
	}()
	for ctx.Err() == nil {
		sess := next
		next = nil
		if sess == nil {
			var err error
			if sess, err = e.dialRacing(ctx, lastUp, &failures); err != nil {
				return // ctx ended
			}
		}
		slot := e.pool.reserveSlot()
		c, err := e.handshake(ctx, sess, slot, true)
		if err != nil {
			e.pool.releaseSlot(slot)
			if ctx.Err() != nil { // the edge is stopping: no failure to report
				_ = sess.CloseWithError("edge stopping")
				return
			}
			failures++
			e.metrics.connectFailures.Inc()
			if e.pool.size() == 0 {
				e.outage.failed(err) // the first of an outage at WARN, then the reminders
				e.log.Debug("core refused or broke the handshake; retrying", "err", err, "attempt", failures)
			} else {
				e.warns.Log(e.log, slog.LevelWarn, "", "core refused or broke the handshake of the pool's anchor; retrying", "err", err, "attempt", failures,
					"why", explainDial(err, e.outage.mode))
			}
			_ = sess.CloseWithError("handshake failed")
			if !waitctx.Sleep(ctx, e.backoff(lastUp, failures)) {
				return
			}
			continue
		}
		failures = 0
		e.metrics.transport.Reset()
		e.metrics.transport.WithLabelValues(sess.Transport()).Set(1)
		if tr := sess.Transport(); tr != lastTransport {
			// With --transport tcp pinned, TCP is no fallback: nothing to explain, and
			// never UDP to blame.
			if lastTransport != "" || (tr == "tcp" && e.cfg.Dial.Mode != tunnel.ModeTCP) {
				why := "QUIC works again"
				if tr == "tcp" {
					why = "QUIC (UDP) did not complete in time; check that UDP to the core's port is open"
				}
				e.log.Info("transport changed", "from", lastTransport, "to", tr, "why", why)
				e.metrics.transportChanges.WithLabelValues(tr).Inc()
			}
			lastTransport = tr
		}
		e.pool.add(c)
		e.outage.up()
		reason := c.run()
		next = c.handover
		e.pool.remove(c)
		if e.pool.size() == 0 {
			e.outage.down(time.Now())
		}
		e.metrics.reconnects.Inc()
		lastUp = time.Now()
		if ctx.Err() == nil {
			e.metrics.poolChanges.WithLabelValues(connLost).Inc()
			e.log.Warn("connection to the core lost; reconnecting", "reason", reason, "conn", c.slot,
				"pool_connections_left", e.pool.size(), "pending_requests", e.reqs.size())
		}
	}
}

// backoff is short while the core was reachable in the last minutes — a returning
// link must be noticed within about a second — and grows towards MaxBackoff after
// long failure, so a core that is gone is not hammered.
func (e *Edge) backoff(lastUp time.Time, failures int) time.Duration {
	base := e.cfg.ProbeInterval
	if lastUp.IsZero() || time.Since(lastUp) > 5*time.Minute {
		for i := 1; i < failures && base < e.cfg.MaxBackoff; i++ {
			base *= 2
		}
		base = min(base, e.cfg.MaxBackoff)
	}
	// ±20 % jitter so a fleet of edges does not reconnect in lock step.
	return time.Duration(float64(base) * (0.8 + 0.4*rand.Float64()))
}

// dialRacing starts a fresh attempt every backoff interval without waiting for the
// previous one to fail (a handshake started during a blackout retransmits with its own
// growing backoff), and returns the first that completes.
func (e *Edge) dialRacing(ctx context.Context, lastUp time.Time, failures *int) (tunnel.Session, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan tunnel.Session)
	var attempts sync.WaitGroup
	defer attempts.Wait()
	const maxConcurrent = 4
	sem := make(chan struct{}, maxConcurrent)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case sess := <-results:
			cancel()
			return sess, nil
		case <-timer.C:
		}
		select {
		case sem <- struct{}{}:
			attempts.Go(func() {
				defer func() { <-sem }()
				sess, err := e.dialer.Dial(ctx, e.cfg.CoreAddr)
				if err != nil {
					if ctx.Err() == nil {
						e.log.Debug("connection attempt failed", "core", e.cfg.CoreAddr, "err", err)
						if e.pool.size() == 0 {
							e.outage.failed(err)
						}
					}
					return
				}
				select {
				case results <- sess:
				case <-ctx.Done():
					_ = sess.CloseWithError("another attempt won")
				}
			})
		default:
		}
		*failures++
		timer.Reset(e.backoff(lastUp, *failures))
	}
}

// handshake opens the control stream and exchanges hello in slot: the first I/O on
// a new connection, which is also where a certificate the core rejects shows up.
func (e *Edge) handshake(ctx context.Context, sess tunnel.Session, slot uint32, anchor bool) (*conn, error) {
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := sess.OpenStream(hctx)
	if err != nil {
		return nil, fmt.Errorf("open control stream: %w", err)
	}
	stop := context.AfterFunc(hctx, func() { _ = st.Close() })
	defer stop()
	epoch, cursor := e.cursor.get()
	hello := wire.Hello{Version: wire.Version, EdgeName: e.cfg.Name, EdgeSession: e.session, CoreEpoch: epoch, PubCursor: cursor, Pending: uint32(e.reqs.size()), Conn: slot}
	_ = st.SetWriteDeadline(time.Now().Add(e.cfg.WriteTimeout))
	if err := wire.Write(st, wire.THello, hello.Encode()); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	rd := wire.NewReader(st, 64<<10)
	typ, body, err := rd.Next()
	if err != nil {
		return nil, fmt.Errorf("read hello answer (a core that rejects this edge's certificate closes here): %w", err)
	}
	switch typ {
	case wire.THelloAck:
	case wire.TReject:
		return nil, fmt.Errorf("core rejected this edge: %s", body)
	default:
		return nil, fmt.Errorf("unexpected %s in answer to hello: %w", typ, wire.ErrMalformed)
	}
	ack, err := wire.DecodeHelloAck(body)
	if err != nil {
		return nil, fmt.Errorf("decode hello answer: %w", err)
	}
	stop()
	cctx, ccancel := context.WithCancelCause(ctx)
	c := &conn{
		e: e, sess: sess, ctx: cctx, cancel: ccancel, ack: ack, slot: slot, anchor: anchor,
		log: e.log.With("core", ack.CoreName, "remote", sess.RemoteAddr(), "transport", sess.Transport(), "conn", slot),
	}
	c.lastPong.Store(time.Now().UnixNano())
	c.wg.Go(func() { c.runControl(st, rd) })
	level := slog.LevelInfo
	if !anchor {
		level = slog.LevelDebug // the sizer logs why it added one
	}
	c.log.Log(ctx, level, "connected to the core", "core_epoch", ack.CoreEpoch, "core_head_seq", ack.HeadSeq,
		"pub_cursor", cursor, "pending_requests", hello.Pending)
	return c, nil
}

// run serves the connection until it ends, and returns why.
func (c *conn) run() error {
	stopSess := context.AfterFunc(c.sess.Context(), func() { c.cancel(context.Cause(c.sess.Context())) })
	defer stopSess()
	if c.anchor && c.sess.Transport() == "tcp" && c.e.cfg.Dial.Mode == tunnel.ModeAuto {
		c.wg.Go(c.probeQUIC)
	}
	<-c.ctx.Done()
	reason := context.Cause(c.ctx)
	_ = c.sess.CloseWithError(reason.Error())
	c.goMu.Lock()
	c.stopped = true // the dispatcher may still hold this conn: no Add during Wait
	c.goMu.Unlock()
	c.wg.Wait()
	return reason
}

// probeQUIC tries QUIC now and then while the session runs on the TCP fallback.
// When it works, the connection ends and the next one is that QUIC session: requests
// on the way are re-sent under their IDs and publications resume from the cursor, so
// the move loses and duplicates nothing.
func (c *conn) probeQUIC() {
	t := time.NewTicker(c.e.cfg.QUICProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
		s, err := c.e.dialer.DialMode(ctx, c.e.cfg.CoreAddr, tunnel.ModeQUIC)
		cancel()
		if err != nil {
			c.log.Debug("QUIC probe failed; staying on TCP", "err", err)
			continue
		}
		c.handover = s
		c.cancel(errBackToQUIC)
		return
	}
}

// watchProgress ends the connection when nothing at all arrived from the core —
// no packet, no pong — for StallTimeout while a ping is unanswered. Progress is
// sampled every PingInterval: the transport's count of what arrived moved, or a
// pong came.
func (c *conn) watchProgress() {
	t := time.NewTicker(c.e.cfg.PingInterval)
	defer t.Stop()
	received := c.sess.Stats().PacketsReceived
	progress := time.Now()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		if r := c.sess.Stats().PacketsReceived; r != received {
			received, progress = r, now
		}
		if p := time.Unix(0, c.lastPong.Load()); p.After(progress) {
			progress = p
		}
		unanswered := c.pingsSent.Load() - c.pongs.Load()
		if quiet := now.Sub(progress); quiet > c.e.cfg.StallTimeout && unanswered > 0 {
			c.e.metrics.stalls.Inc()
			c.cancel(fmt.Errorf("%w: no packet from the core for %s with %d pings unanswered",
				errStalled, quiet.Round(100*time.Millisecond), unanswered))
			return
		}
	}
}

// runControl sends pings and cursor acks, and reads pongs. The connection is
// stalled when nothing at all arrived from the core — no packet, no pong — for
// StallTimeout while a ping is unanswered: end it so a fresh one is raced. A pong
// late behind a queue of data is not a stall: the data arriving is progress
// (DESIGN §4, liveness from progress, never from latency).
func (c *conn) runControl(st tunnel.Stream, rd *wire.Reader) {
	defer st.Close()
	stop := context.AfterFunc(c.ctx, func() { _ = st.Close() })
	defer stop()
	c.wg.Go(func() {
		for {
			typ, body, err := rd.Next()
			if err != nil {
				c.cancel(fmt.Errorf("control stream: %w", err))
				return
			}
			if typ != wire.TPong {
				c.cancel(fmt.Errorf("unexpected %s on the control stream: %w", typ, wire.ErrMalformed))
				return
			}
			if sent, err := wire.DecodeU64(body); err == nil {
				now := time.Now().UnixNano()
				c.rtt.Store(now - int64(sent))
				c.lastPong.Store(now)
				c.pongs.Add(1)
				c.e.metrics.rtt.Set(time.Duration(now - int64(sent)).Seconds())
			}
		}
	})
	// The watch runs on its own: a ping write blocked behind a full send buffer (a
	// blackout under load) must not hold up noticing that nothing arrives.
	c.wg.Go(c.watchProgress)
	t := time.NewTicker(c.e.cfg.PingInterval)
	defer t.Stop()
	var acked uint64
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		buf := wire.Append(nil, wire.TPing, wire.U64Body(uint64(now.UnixNano())))
		if _, cur := c.e.cursor.get(); cur != acked {
			buf = wire.Append(buf, wire.TAck, wire.U64Body(cur))
			acked = cur
		}
		c.pingsSent.Add(1) // before the write: its pong may come before Write returns
		if _, err := tunnel.WriteIdle(st, buf, c.e.cfg.WriteTimeout); err != nil {
			c.cancel(fmt.Errorf("control stream write: %w", err))
			return
		}
	}
}

// runPubs resumes the publication stream from the edge's cursor and re-publishes
// every publication to the minions, in order.
func (c *conn) runPubs() {
	e := c.e
	if !e.cursor.waitForMinions(c.ctx, e.pub, e.cfg.ReplayHold, c.log) {
		return
	}
	st, err := c.sess.OpenStream(c.ctx)
	if err != nil {
		c.cancel(fmt.Errorf("open publication stream: %w", err))
		return
	}
	defer st.Close()
	stop := context.AfterFunc(c.ctx, func() { _ = st.Close() })
	defer stop()
	epoch, cursor := e.cursor.get()
	_ = st.SetWriteDeadline(time.Now().Add(e.cfg.WriteTimeout))
	if err := wire.Write(st, wire.TSubscribe, wire.Subscribe{CoreEpoch: epoch, Cursor: cursor}.Encode()); err != nil {
		c.cancel(fmt.Errorf("subscribe: %w", err))
		return
	}
	_ = st.SetWriteDeadline(time.Time{})
	rd := wire.NewReader(st, e.cfg.MaxMessageSize+64<<10)
	for {
		typ, body, err := rd.Next()
		if errors.Is(err, wire.ErrTooLarge) && typ == wire.TPub {
			seq := wire.NewDecoder(body[:min(8, len(body))]).U64()
			c.log.Warn("publication skipped: larger than this edge's --max-message-size", "seq", seq, "err", err)
			e.metrics.gapPubs.Inc()
			if seq > cursor {
				cursor = seq
				e.cursor.setCursor(cursor)
			}
			continue
		}
		if err != nil {
			c.cancel(fmt.Errorf("publication stream: %w", err))
			return
		}
		switch typ {
		case wire.TSubscribe: // the core says where it starts
			s, err := wire.DecodeSubscribe(body)
			if err != nil {
				c.cancel(fmt.Errorf("decode subscribe answer: %w", err))
				return
			}
			e.cursor.set(s.CoreEpoch, s.Cursor)
			cursor = s.Cursor
		case wire.TPub:
			p, err := wire.DecodePub(body)
			if err != nil {
				c.cancel(fmt.Errorf("decode publication: %w", err))
				return
			}
			if p.Seq <= cursor {
				e.metrics.pubDuplicates.Inc()
				continue
			}
			if p.Seq != cursor+1 {
				c.log.Warn("publication sequence jumped", "expected", cursor+1, "got", p.Seq)
				e.metrics.gapPubs.Add(float64(p.Seq - cursor - 1))
			}
			e.pub.Publish(wire.CloneFrames(p.Frames))
			e.metrics.pubs.Inc()
			cursor = p.Seq
			e.cursor.setCursor(cursor)
		case wire.TGap:
			g, err := wire.DecodeGap(body)
			if err != nil {
				c.cancel(fmt.Errorf("decode gap: %w", err))
				return
			}
			n := g.To - g.From + 1
			e.metrics.gapPubs.Add(float64(n))
			c.log.Warn("publications lost in an outage longer than the core's replay window; minions will miss these jobs",
				"from_seq", g.From, "to_seq", g.To, "count", n)
			cursor = g.To
			e.cursor.setCursor(cursor)
		default:
			c.cancel(fmt.Errorf("unexpected %s on the publication stream: %w", typ, wire.ErrMalformed))
			return
		}
	}
}

// goRequest carries one request on its own stream of this connection. When the
// connection dies first, the request goes back in line and the dispatcher puts it
// on another connection of the pool, under the same ID.
func (c *conn) goRequest(r *edgeReq) {
	n := r.size
	c.inflight.Add(1)
	if b := c.inflightBytes.Add(n); b > c.peakBytes.Load() {
		c.peakBytes.Store(b) // only the dispatcher adds: no lost update
	}
	unload := func() {
		c.inflight.Add(-1)
		c.inflightBytes.Add(-n)
	}
	started := c.goWork(func() {
		defer unload()
		switch err := c.exchange(r); {
		case err == nil:
		case c.ctx.Err() != nil:
			c.e.reqs.requeue(r) // the next connection re-sends it under the same ID
		default:
			c.log.Debug("request stream failed; re-sending", "err", err)
			waitctx.Sleep(c.ctx, 200*time.Millisecond) // no tight loop on a failing stream
			c.e.reqs.requeue(r)
		}
	})
	if !started {
		unload()
		c.e.reqs.requeue(r)
	}
}

// retire takes the connection out of the pool gently: it gets no new requests,
// and ends once those on it are answered (at most retireWait), so shrinking the
// pool re-sends nothing. If it carries the publication stream, the stream moves to
// another connection when it ends.
func (c *conn) retire(why string) {
	if c.retiring.Swap(true) {
		return
	}
	c.goWork(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		deadline := time.Now().Add(retireWait)
		for c.inflight.Load() > 0 && time.Now().Before(deadline) {
			select {
			case <-c.ctx.Done():
				return
			case <-t.C:
			}
		}
		c.cancel(fmt.Errorf("%w: %s", errRetired, why))
	})
}

// retireWait bounds how long a retired connection waits for its requests' replies;
// those still unanswered then are re-sent on the others.
const retireWait = 30 * time.Second

// exchange sends r and waits for its reply or refusal. An error means the outcome is
// unknown and the request must be re-sent.
func (c *conn) exchange(r *edgeReq) error {
	e := c.e
	raw, err := c.sess.OpenStream(c.ctx)
	if err != nil {
		return fmt.Errorf("open request stream: %w", err)
	}
	defer raw.Close()
	// raw, never reassigned: the AfterFunc reads it from another goroutine.
	stop := context.AfterFunc(c.ctx, func() { _ = raw.Close() })
	defer stop()
	// No deadline that progress can hit: every write and read on this stream fails
	// only after WriteTimeout without progress. The reply's first byte is waited for
	// without one — the master may take minutes, the core says so when it gives up
	// (MasterTimeout), and a dead connection ends c.ctx, which closes st.
	st := tunnel.IdleStream(raw, e.cfg.WriteTimeout, true)
	release, err := c.admitUpload(r)
	if err != nil {
		return fmt.Errorf("wait to send request: %w", err)
	}
	if err := wire.Write(st, wire.TRequest, wire.Request{ID: r.id, Frames: r.body, MaxQueueAge: e.queueBudget(r, time.Now())}.Encode()); err != nil {
		release()
		return fmt.Errorf("send request: %w", err)
	}
	release()
	rd := wire.NewReader(st, e.cfg.MaxMessageSize+64<<10)
	typ, body, err := rd.Next()
	if errors.Is(err, wire.ErrTooLarge) {
		// Re-sending would bring the same reply: end it, as a minion's master would.
		e.refused(r, wire.Refused{ID: r.id, Code: wire.RefusedTooLarge, Reason: "reply larger than the edge's --max-message-size"})
		_ = wire.Write(st, wire.TDone, wire.U64Body(r.id))
		return nil
	}
	if err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	switch typ {
	case wire.TReply:
		rep, err := wire.DecodeReply(body)
		if err != nil || rep.ID != r.id {
			return fmt.Errorf("bad reply record for request %d: %w", r.id, wire.ErrMalformed)
		}
		e.deliver(r, wire.CloneFrames(rep.Frames))
		_ = wire.Write(st, wire.TDone, wire.U64Body(r.id))
		_ = st.CloseWrite()
		return nil
	case wire.TRefused:
		ref, err := wire.DecodeRefused(body)
		if err != nil {
			return fmt.Errorf("bad refusal for request %d: %w", r.id, err)
		}
		e.refused(r, ref)
		return nil
	default:
		return fmt.Errorf("unexpected %s answering request %d: %w", typ, r.id, wire.ErrMalformed)
	}
}

// admitUpload waits for r's turn when it is large (bulkThreshold), so uploads on
// this connection go in turn rather than all sharing the link (tunnel.Gate). The
// budget is released once the request is written, not when its reply comes: the
// reply waits for the master, which is no transfer.
func (c *conn) admitUpload(r *edgeReq) (release func(), err error) {
	n := wire.Size(r.body)
	if n <= bulkThreshold {
		return func() {}, nil
	}
	return c.bulk.Acquire(c.ctx, int64(n), uploadInFlightBytes)
}

func slogLevelFor(code byte) slog.Level {
	if code == wire.RefusedCancelled {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}
