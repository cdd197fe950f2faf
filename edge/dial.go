package edge

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/salt-broker/salt-broker/internal/waitctx"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/tunnel"
)

const (
	// backoffFreshUp: a link that was up this recently is retried at the probe
	// interval, not backed off; one that has been down longer is treated as gone.
	backoffFreshUp = 5 * time.Minute
	// handshakeTimeout bounds opening the control stream and the hello exchange,
	// so a core that accepts the connection but never answers frees the slot.
	handshakeTimeout = 10 * time.Second
	// helloAnswerMax is the largest hello-ack or reject accepted: both are a few
	// fields and a reason string, far below any message.
	helloAnswerMax = 64 << 10
	// quicProbeTimeout bounds one QUIC probe while on the TCP fallback, so a
	// blackholed UDP path costs one short attempt per probe interval.
	quicProbeTimeout = 5 * time.Second
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
	if lastUp.IsZero() || time.Since(lastUp) > backoffFreshUp {
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
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
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
	rd := wire.NewReader(st, helloAnswerMax)
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
		e: e, outcomes: e, sess: sess, ctx: cctx, cancel: ccancel, ack: ack, slot: slot, anchor: anchor,
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
		ctx, cancel := context.WithTimeout(c.ctx, quicProbeTimeout)
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
