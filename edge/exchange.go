package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/salt-broker/salt-broker/internal/waitctx"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/tunnel"
)

// Large requests (above bulkThreshold) are written in turn, at most
// uploadInFlightBytes at once (at least one); small ones are never held back. The
// core bounds its large replies the same way (--bulk-in-flight-bytes); the edge's
// budget is fixed, since requests that large are rare (a minion's file upload).
const (
	bulkThreshold       = 64 << 10
	uploadInFlightBytes = 4 << 20
)

const (
	// streamRetryPause is the wait before re-sending a request whose stream failed
	// on a live connection, so a stream that fails at once is not a busy loop.
	streamRetryPause = 200 * time.Millisecond
	// retirePoll is how often a retiring connection looks whether its last request
	// has finished (within retireWait).
	retirePoll = 100 * time.Millisecond
)

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
			c.outcomes.requeue(r) // the next connection re-sends it under the same ID
		default:
			c.log.Debug("request stream failed; re-sending", "err", err)
			waitctx.Sleep(c.ctx, streamRetryPause) // no tight loop on a failing stream
			c.outcomes.requeue(r)
		}
	})
	if !started {
		unload()
		c.outcomes.requeue(r)
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
		t := time.NewTicker(retirePoll)
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
	rd := wire.NewReader(st, e.cfg.MaxMessageSize+wire.FrameSlack)
	typ, body, err := rd.Next()
	if errors.Is(err, wire.ErrTooLarge) {
		// Re-sending would bring the same reply: end it, as a minion's master would.
		c.outcomes.refused(r, wire.Refused{ID: r.id, Code: wire.RefusedTooLarge, Reason: "reply larger than the edge's --max-message-size"})
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
		c.outcomes.deliver(r, wire.CloneFrames(rep.Frames))
		_ = wire.Write(st, wire.TDone, wire.U64Body(r.id))
		_ = st.CloseWrite()
		return nil
	case wire.TRefused:
		ref, err := wire.DecodeRefused(body)
		if err != nil {
			return fmt.Errorf("bad refusal for request %d: %w", r.id, err)
		}
		c.outcomes.refused(r, ref)
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
