package edge

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/tunnel"
)

// conn is one live tunnel connection to the core and everything running on it.
type conn struct {
	e *Edge
	// outcomes is where the requests and cancels it carries are reported
	// (outcomes.go): the connection never reaches into the request table.
	outcomes requestOutcomes
	sess     tunnel.Session
	ctx      context.Context
	cancel   context.CancelCauseFunc
	log      *slog.Logger
	ack      wire.HelloAck
	wg       sync.WaitGroup

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

var (
	errStalled    = errors.New("connection stalled")
	errBackToQUIC = errors.New("QUIC reachable again: moving the session back from TCP")
	errRetired    = errors.New("taken out of the pool")
)

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
