package edge

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/salt-broker/salt-broker/tunnel"
)

// The sizer's rule (docs/architecture.md, "The pool"). Every sizeEvery it looks at
// each connection's transport figures over the last interval and moves the pool by
// at most one connection:
//
//   - grow when requests wait — even the least-loaded connection is busy: it had
//     more bytes of requests in flight than its congestion window, or it kept over
//     busyShare of its window in flight on average over the interval (bytes sent ×
//     smoothed RTT / interval: a window that full is queueing what it carries) —
//     and the loss looks random: over
//     randomLoss of the packets sent were lost while the smoothed RTT stayed under
//     randomRTT × the RTT floor. Random loss (a noisy radio, a lossy peering)
//     shrinks a loss-based window (Reno) for nothing: a second window doubles what
//     gets through without queueing anything anywhere.
//   - step back when the RTT climbs with loss: smoothed RTT over congestedRTT ×
//     the RTT floor with packets lost. That is a queue building at a bottleneck:
//     real congestion, shared with other flows; the pool must not push harder than
//     the flows it replaces, so it gives a window back.
//   - shrink when idle: no request for idleAfter.
//   - never exceed min(--max-connections, minions connected, ≥ 1): fifty minions
//     had fifty windows; the pool never has more than the minions it carries.
//
// The RTT floor is the least smoothed RTT of the last floorWindow intervals, not the
// connection's lifetime minimum: a path whose RTT moved for good (a new route, a
// satellite hand-over, a link that came up before its delay did) would otherwise
// read as a queue forever, and a lossy path would never grow its pool. Ten
// seconds, as BBR's min-RTT filter: a queue builds within a few intervals and is
// seen as it builds.
const (
	sizeEvery    = time.Second
	randomLoss   = 0.005
	randomRTT    = 1.5
	congestedRTT = 2.0
	idleAfter    = 30 * time.Second
	// minPackets: below this many packets in an interval a loss rate says nothing
	// (one loss in ten packets is not 10 %).
	minPackets = 30
	// settleTicks: after a change, the next decision waits this many intervals, so
	// the new connection's figures (its RTT floor, its window) mean something.
	settleTicks = 1
	floorWindow = 10 // intervals
	floorMature = 3  // intervals of a connection's own before its RTT is judged
	lossWindow  = 5  // intervals the growth rule's loss rate spans
	// busyShare: a loss-based window that is on average over half full is near
	// its ceiling (Reno saws between half and all of it), and what it carries
	// queues behind it.
	busyShare = 0.5
)

// Reasons of pool changes, the label of salt_broker_edge_tunnel_pool_changes_total.
const (
	grewRandomLoss  = "random_loss" // grew: requests wait and loss looks random
	shrankCongested = "congestion"  // shrank: RTT climbs with loss
	shrankIdle      = "idle"        // shrank: no request for idleAfter
	shrankCap       = "cap"         // shrank: past min(--max-connections, minions)
	shrankTransport = "transport"   // shrank: on another transport than the anchor (it moved back to QUIC)
	connLost        = "lost"        // a connection ended by itself (stall, the core, the operator)
)

var poolChangeReasons = []string{grewRandomLoss, shrankCongested, shrankIdle, shrankCap, shrankTransport, connLost}

// sizeInput is what one decision is made from: the pool's figures over the last
// interval.
type sizeInput struct {
	size, cap int    // usable connections now; the most allowed
	waiting   bool   // every usable connection was busy (see the rule)
	idle      bool   // no request for idleAfter
	sent      uint64 // packets sent in the interval, all connections
	lost      uint64 // packets lost in the interval, all connections
	// The same over the last lossWindow intervals: the loss rate the growth rule
	// reads. A TCP connection sends full segments, twenty a second under a load
	// that is thirty QUIC packets, and a light load few of either: one interval
	// alone would seldom have minPackets to judge from.
	recentSent, recentLost uint64
	rttRatio               float64 // the largest smoothed RTT / RTT floor of the connections
	// For the debug log: the least-loaded connection's peak bytes in flight and window.
	peak, cwnd uint64
}

// decide is the rule, a pure function: +1, -1 or 0 connections, and why.
func decide(in sizeInput) (int, string) {
	if in.size > in.cap {
		return -1, shrankCap
	}
	if in.size > 1 && in.lost > 0 && in.rttRatio > congestedRTT {
		return -1, shrankCongested
	}
	if in.size > 1 && in.idle {
		return -1, shrankIdle
	}
	if in.size < in.cap && in.waiting && in.recentSent >= minPackets &&
		float64(in.recentLost)/float64(in.recentSent) > randomLoss && in.rttRatio < randomRTT {
		return 1, grewRandomLoss
	}
	return 0, ""
}

// capacity is the most connections allowed now: min(--max-connections, minions
// connected, at least 1). Minions are the larger of the publish and ret ports'
// connections (a Salt minion holds one of each; a tool may hold only a REQ).
func (e *Edge) capacity() int {
	return poolCap(e.cfg.MaxConnections, int(max(e.pub.Stats().Peers, e.router.Stats().Peers)))
}

func poolCap(maxConns, minions int) int { return max(1, min(maxConns, minions)) }

// sizerLoop runs the rule every sizeEvery until ctx ends, and owns the extra
// connections it adds: it waits for every one of them before it returns.
func (e *Edge) sizerLoop(ctx context.Context) {
	var extras sync.WaitGroup
	defer extras.Wait()
	t := time.NewTicker(sizeEvery)
	defer t.Stop()
	prev := map[*conn]connSample{}
	var recent lossHistory
	settle := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		conns, _ := e.pool.snapshot()
		in, anchor, stats := e.sample(conns, prev)
		prev = stats
		in.recentSent, in.recentLost = recent.add(in.sent, in.lost)
		if anchor == nil {
			continue // the connect loop is bringing the link back
		}
		// Extras follow the anchor's transport: on the fallback they are TCP, and
		// when the anchor moves back to QUIC they are replaced by QUIC ones.
		for _, c := range conns {
			if c.usable() && !c.anchor && c.sess.Transport() != anchor.sess.Transport() {
				e.change(-1, shrankTransport, in, func() { c.retire("the pool moved to " + anchor.sess.Transport()) })
			}
		}
		if settle > 0 {
			settle--
			continue
		}
		delta, why := decide(in)
		e.log.Debug("tunnel pool sizing", "connections", in.size, "cap", in.cap, "requests_waiting", in.waiting, "idle", in.idle,
			"packets_sent", in.sent, "packets_lost", in.lost, "recent_sent", in.recentSent, "recent_lost", in.recentLost, "rtt_ratio", math.Round(in.rttRatio*100)/100,
			"least_loaded_peak_bytes", in.peak, "least_loaded_cwnd", in.cwnd, "move", delta, "reason", why)
		switch {
		case delta > 0:
			mode := tunnel.Mode(anchor.sess.Transport())
			if e.grow(ctx, mode, &extras) {
				e.change(1, why, in, nil)
				settle = settleTicks
			}
		case delta < 0:
			if v := victim(conns); v != nil {
				e.change(-1, why, in, func() { v.retire(why) })
				settle = settleTicks
			}
		}
	}
}

// connSample is what the sizer remembers of a connection between intervals: its
// last figures (for the deltas) and its RTT floor.
type connSample struct {
	stats tunnel.Stats
	floor rttFloor
}

// lossHistory sums packets sent and lost over the last lossWindow intervals.
type lossHistory struct {
	sent, lost [lossWindow]uint64
	next       int
}

// add records one interval and returns the sums over the window.
func (h *lossHistory) add(sent, lost uint64) (sumSent, sumLost uint64) {
	h.sent[h.next], h.lost[h.next] = sent, lost
	h.next = (h.next + 1) % lossWindow
	for i := range lossWindow {
		sumSent += h.sent[i]
		sumLost += h.lost[i]
	}
	return sumSent, sumLost
}

// rttFloor is the least of the last floorWindow smoothed-RTT samples.
type rttFloor struct {
	samples [floorWindow]time.Duration
	n, next int
}

func (f *rttFloor) add(d time.Duration) {
	if d <= 0 {
		return
	}
	f.samples[f.next] = d
	f.next = (f.next + 1) % floorWindow
	f.n = min(f.n+1, floorWindow)
}

func (f *rttFloor) min() time.Duration {
	var m time.Duration
	for _, d := range f.samples[:f.n] {
		if m == 0 || d < m {
			m = d
		}
	}
	return m
}

// sample reads each connection's figures, sets their loss rates and peaks for the
// next interval, and returns the decision's input, the anchor and what to compare
// with next time.
func (e *Edge) sample(conns []*conn, prev map[*conn]connSample) (sizeInput, *conn, map[*conn]connSample) {
	now := time.Now()
	in := sizeInput{cap: e.capacity(), idle: e.pool.idleFor(now) > idleAfter}
	next := make(map[*conn]connSample, len(conns))
	var anchor *conn
	waiting := true
	for _, c := range conns {
		st := c.sess.Stats()
		p, seen := prev[c]
		cur := connSample{stats: st, floor: p.floor}
		if seen {
			cur.floor.add(st.SmoothedRTT)
		}
		next[c] = cur
		peak := c.peakBytes.Swap(c.inflightBytes.Load())
		if !c.usable() {
			continue
		}
		in.size++
		if c.anchor {
			anchor = c
		}
		var used uint64 // average bytes in flight over the interval
		if seen && st.SmoothedRTT > 0 {
			sent := sub(st.BytesSent, p.stats.BytesSent)
			used = uint64(float64(sent) * st.SmoothedRTT.Seconds() / sizeEvery.Seconds())
		}
		waiting = waiting && busy(uint64(peak), used, st.CongestionWindow)
		if in.size == 1 || uint64(peak)*in.cwnd < in.peak*st.CongestionWindow {
			in.peak, in.cwnd = uint64(peak), st.CongestionWindow
		}
		// A new connection's first figures are its handshake's (or quic-go's
		// initial guess, 100 ms): read as a floor, they made a 600 ms path look
		// six times congested and the pool step back at once. Its RTT counts once
		// it has a few intervals of its own.
		if floor := cur.floor.min(); floor > 0 && cur.floor.n >= floorMature {
			in.rttRatio = max(in.rttRatio, float64(st.SmoothedRTT)/float64(floor))
		}
		if !seen {
			continue // new: no interval yet
		}
		sent := sub(st.PacketsSent, p.stats.PacketsSent)
		lost := sub(st.PacketsLost, p.stats.PacketsLost) // QUIC's count may go down (a late packet)
		in.sent += sent
		in.lost += lost
		if sent > 0 {
			c.lossRate.Store(math.Float64bits(float64(lost) / float64(sent)))
		}
	}
	in.waiting = waiting && in.size > 0
	return in, anchor, next
}

// busy: a connection's window is what holds its requests back — more bytes of
// requests in flight at a peak than the window, or over busyShare of the window
// used on average.
func busy(peak, used, cwnd uint64) bool {
	return cwnd > 0 && (peak > cwnd || float64(used) > busyShare*float64(cwnd))
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// victim is the connection to retire: never the anchor; one not carrying the
// publication stream if there is one (the stream moves as seldom as can be); then
// the fewest requests in flight.
func victim(conns []*conn) *conn {
	var best *conn
	for _, c := range conns {
		if c.anchor || !c.usable() {
			continue
		}
		if best == nil || (best.carriesPubs.Load() && !c.carriesPubs.Load()) ||
			(best.carriesPubs.Load() == c.carriesPubs.Load() && c.inflight.Load() < best.inflight.Load()) {
			best = c
		}
	}
	return best
}

// change logs and counts one pool change, then makes it (do may be nil: done).
func (e *Edge) change(delta int, why string, in sizeInput, do func()) {
	loss := 0.0
	if in.recentSent > 0 {
		loss = float64(in.recentLost) / float64(in.recentSent)
	}
	msg := "tunnel pool grows: one more connection to the core"
	if delta < 0 {
		msg = "tunnel pool shrinks: one connection fewer"
	}
	e.log.Info(msg, "reason", why, "connections", in.size+delta, "cap", in.cap,
		"loss", math.Round(loss*10000)/10000, "rtt_ratio", math.Round(in.rttRatio*100)/100, "requests_waiting", in.waiting)
	e.metrics.poolChanges.WithLabelValues(why).Inc()
	if do != nil {
		do()
	}
}

// grow dials one more connection on the anchor's transport, through the edge's
// one Dialer (so QUIC ones share its UDP socket), says hello in a free slot and
// runs it, owned by extras. False if it did not come up (logged; the rule asks
// again next interval).
func (e *Edge) grow(ctx context.Context, mode tunnel.Mode, extras *sync.WaitGroup) bool {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sess, err := e.dialer.DialMode(dctx, e.cfg.CoreAddr, mode)
	if err != nil {
		e.log.Debug("extra connection to the core failed", "err", err)
		return false
	}
	slot := e.pool.reserveSlot()
	c, err := e.handshake(ctx, sess, slot, false)
	if err != nil {
		e.pool.releaseSlot(slot)
		_ = sess.CloseWithError("handshake failed")
		e.log.Warn("extra connection to the core refused at the hello", "err", err)
		return false
	}
	e.pool.add(c)
	extras.Go(func() {
		reason := c.run()
		e.pool.remove(c)
		if !c.retiring.Load() && ctx.Err() == nil {
			e.metrics.poolChanges.WithLabelValues(connLost).Inc()
			e.log.Info("tunnel pool: a connection ended", "conn", c.slot, "reason", reason, "connections", e.pool.size())
		}
	})
	return true
}
