package edge

import (
	"context"
	"fmt"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/tunnel"
)

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
