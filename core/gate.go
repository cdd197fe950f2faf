package core

import (
	"context"

	"github.com/salt-broker/salt-broker/tunnel"
)

// DefaultBulkInFlightBytes is --bulk-in-flight-bytes: enough to keep a long fat link
// busy (300 ms × 100 Mbit/s ≈ 4 MB), small enough that 20 file chunks on a
// satellite link go a few at a time instead of all at once.
const DefaultBulkInFlightBytes = 4 << 20

// bulkThreshold: replies larger than this (file chunks, large pillars) take their
// turn at the connection's gate; smaller ones (auth, a return's ack) never wait
// behind them.
const bulkThreshold = 64 << 10

// admitReply waits for a reply record of n bytes to have its turn on e's
// connection, in arrival order (tunnel.Gate says why that is fair), unless it is
// small. The caller releases once the edge confirmed the reply (or gave up), so
// the budget bounds what is truly on the way, the socket buffers of the TCP
// fallback included. An error means ctx ended: the edge went away and re-sends.
func (e *edgeConn) admitReply(ctx context.Context, n int) (release func(), err error) {
	if n <= bulkThreshold {
		return func() {}, nil
	}
	if release, ok := e.bulk.TryAcquire(int64(n), e.c.cfg.BulkInFlightBytes); ok {
		return release, nil
	}
	e.c.metrics.bulkWaits.Inc()
	return e.bulk.Acquire(ctx, int64(n), e.c.cfg.BulkInFlightBytes)
}

// bulkStats sums the gates of every edge connection, for the metrics.
func (c *Core) bulkStats() tunnel.GateStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	var sum tunnel.GateStats
	for e := range c.edges {
		st := e.bulk.Stats()
		sum.InFlight += st.InFlight
		sum.Holders += st.Holders
		sum.Waiting += st.Waiting
		sum.WaitingBytes += st.WaitingBytes
	}
	return sum
}

// unconfirmed counts and logs a reply the edge did not confirm. It stays cached:
// the edge re-sends a request it has no reply for, under the same ID, and gets it
// again (and if the edge did deliver it, its re-send never comes and the entry
// expires with the dedup TTL).
func (e *edgeConn) unconfirmed(id uint64, reason string, err error) {
	e.c.metrics.repliesUnconfirmed.WithLabelValues(reason).Inc()
	e.c.log.Debug("reply not confirmed by the edge; it stays cached for a re-send",
		"edge", e.sess.PeerName(), "remote", e.sess.RemoteAddr(), "request_id", id, "reason", reason, "err", err)
}
