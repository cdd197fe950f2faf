package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/salt-broker/salt-broker/internal/ratelog"
	"github.com/salt-broker/salt-broker/internal/waitctx"
	"github.com/salt-broker/salt-broker/internal/wire"
)

// The master side uses zmq4: the peer is the trusted master, and zmq4's SUB and
// DEALER interoperate with libzmq. Settings follow dependency-pitfalls.md §zmq4:
// unlimited reconnects (item 5), exactly one endpoint per DEALER (item 5), SendMulti
// always (item 10), EOF from Recv is not fatal (upstream #109, #157), our own
// per-request timeout (the table's sweep), and COMMAND messages (PING, item 4)
// never taken for data.

const (
	masterRetry       = 500 * time.Millisecond
	masterSlowConnect = 10 * time.Second
	// masterDialTimeout bounds one dial attempt to the master.
	masterDialTimeout = 5 * time.Second
	// masterIOTimeout is zmq4's per-operation timeout on the master sockets.
	masterIOTimeout = 10 * time.Second
	// masterReadPause is the wait after a failed read from the master while zmq4
	// redials, so the read loop does not spin on a socket that is down.
	masterReadPause = 50 * time.Millisecond
)

func zmqOptions() []zmq4.Option {
	return []zmq4.Option{
		zmq4.WithAutomaticReconnect(true),
		zmq4.WithDialerMaxRetries(-1),
		zmq4.WithDialerRetry(masterRetry),
		zmq4.WithDialerTimeout(masterDialTimeout), // a blackholed master must not hold one attempt for minutes
		zmq4.WithTimeout(masterIOTimeout),
	}
}

func endpoint(host string, port int) string {
	return "tcp://" + net.JoinHostPort(host, strconv.Itoa(port))
}

// dialMaster dials one endpoint through its watch, retrying until it works or ctx
// ends (zmq4's own Dial retries forever with these options). The watch logs each
// connection and its loss.
func dialMaster(ctx context.Context, sock zmq4.Socket, w *masterWatch, host string, port int, log *slog.Logger) error {
	log.Info("connecting to the master", "socket", w.socket, "endpoint", endpoint(host, port))
	if err := sock.Dial(w.endpoint(host, port)); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("dial master %s %s: %w", w.socket, endpoint(host, port), err)
	}
	return nil
}

// runSub drains the master's PUB into the ring. It never waits on anything else:
// the master drops publications silently once its pub_hwm (1000) is queued for us.
func (c *Core) runSub(ctx context.Context, sub zmq4.Socket, w *masterWatch) error {
	if err := dialMaster(ctx, sub, w, c.cfg.MasterHost, c.cfg.MasterPubPort, c.log); err != nil {
		return err
	}
	errs := 0
	for {
		msg, err := sub.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errs++; errs == 1 { // the watch logs the loss itself; this error comes with it, often just after the redial
				c.log.Debug("reading publications from the master failed; zmq4 reconnects by itself", "err", err)
			}
			if !waitctx.Sleep(ctx, masterReadPause) {
				return nil
			}
			continue
		}
		errs = 0
		if msg.Type != zmq4.UsrMsg || len(msg.Frames) == 0 {
			continue
		}
		if size := wire.Size(msg.Frames); size > c.cfg.MaxMessageSize {
			// The edge would refuse the record; replaying it would loop forever.
			c.metrics.oversize.WithLabelValues("publication").Inc()
			c.log.Warn("publication from the master dropped: larger than --max-message-size", "bytes", size, "max", c.cfg.MaxMessageSize)
			continue
		}
		seq := c.ring.Append(msg.Frames)
		c.metrics.pubsIn.Inc()
		c.metrics.pubBytesIn.Add(float64(wire.Size(msg.Frames)))
		c.metrics.ringHead.Set(float64(seq))
	}
}

// runDealerSend forwards queued requests to the master, at most MaxInFlight at once,
// so a backlog after an outage drains at the master's pace (DESIGN invariant 4).
// The queue is the table's own (table.next): a request leaves it only once it has a
// slot and goes at once, so until then it can still be cancelled or expire.
func (c *Core) runDealerSend(ctx context.Context, dealer zmq4.Socket, connected <-chan struct{}) {
	select {
	case <-connected:
	case <-ctx.Done():
		return
	}
	for {
		select {
		case c.slots <- struct{}{}:
		case <-c.draining:
			return // what is queued stays queued: its edge re-sends it to the next core
		case <-ctx.Done():
			return
		}
		p, frames := c.nextRequest(ctx)
		if p == nil {
			<-c.slots // ours: taken above and not used
			return
		}
		msg := make([][]byte, 0, 2+len(frames))
		msg = append(msg, ticketFrame(p.ticket), nil)
		msg = append(msg, frames...)
		if err := dealer.SendMulti(zmq4.NewMsgFrom(msg...)); err != nil {
			if ctx.Err() != nil {
				return
			}
			// zmq4 writes a message whole or breaks the connection (the master drops a
			// torn message), so the master does not have it: refuse it at once and free
			// its slot rather than hold both for --master-timeout. The minion's own
			// retry takes over.
			c.warns.Log(c.log, slog.LevelWarn, "", "sending a request to the master failed; the minion will retry it", "err", err)
			c.metrics.masterSendErrors.Inc()
			if c.table.fail(p.ticket, wire.RefusedBusy, "the core could not send it to the master") {
				<-c.slots
			}
			continue
		}
		c.metrics.requestsToMaster.Inc()
	}
}

// nextRequest waits for a queued request and takes it for the master, or returns
// nil once the core drains or stops: nothing new is sent after the drain began.
func (c *Core) nextRequest(ctx context.Context) (*pending, [][]byte) {
	for {
		select {
		case <-c.draining:
			return nil, nil
		case <-ctx.Done():
			return nil, nil
		default:
		}
		if p, frames := c.table.next(); p != nil {
			return p, frames
		}
		select {
		case <-c.table.kick:
		case <-c.draining:
			return nil, nil
		case <-ctx.Done():
			return nil, nil
		}
	}
}

// runDealerRecv hands the master's replies to the table.
func (c *Core) runDealerRecv(ctx context.Context, dealer zmq4.Socket) {
	errs := 0
	for {
		msg, err := dealer.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errs++; errs == 1 { // the watch logs the loss itself; this error comes with it, often just after the redial
				c.log.Debug("reading replies from the master failed; zmq4 reconnects by itself", "err", err)
			}
			if !waitctx.Sleep(ctx, masterReadPause) {
				return
			}
			continue
		}
		errs = 0
		if msg.Type != zmq4.UsrMsg {
			continue
		}
		if len(msg.Frames) < 2 || len(msg.Frames[1]) != 0 {
			c.metrics.badReplies.Inc()
			continue
		}
		ticket, ok := parseTicket(msg.Frames[0])
		if !ok {
			c.metrics.badReplies.Inc()
			continue
		}
		reply := msg.Frames[2:]
		if size := wire.Size(reply); size > c.cfg.MaxMessageSize {
			c.metrics.oversize.WithLabelValues("reply").Inc()
			c.log.Warn("reply from the master refused: larger than --max-message-size; the minion will retry", "bytes", size, "max", c.cfg.MaxMessageSize)
			if c.table.fail(ticket, wire.RefusedTooLarge, "reply larger than the core's --max-message-size") {
				<-c.slots
			}
			continue
		}
		if c.table.complete(ticket, reply) {
			<-c.slots
		} else {
			c.metrics.lateReplies.Inc()
		}
	}
}

// runMaster owns the two zmq4 sockets and their goroutines.
func (c *Core) runMaster(ctx context.Context) error {
	onChange := c.logMasterChange(ctx, c.log)
	subWatch, err := newMasterWatch("SUB", onChange)
	if err != nil {
		return err
	}
	defer subWatch.close()
	dealerWatch, err := newMasterWatch("DEALER", onChange)
	if err != nil {
		return err
	}
	defer dealerWatch.close()
	c.master.Store(&masterLink{sub: subWatch, dealer: dealerWatch})
	defer c.master.Store(nil)
	// zmq4's Dial blocks until it connects: say so when that takes long.
	slow := time.AfterFunc(masterSlowConnect, func() {
		if !subWatch.connected() || !dealerWatch.connected() {
			c.log.Warn("still not connected to the master; requests wait and /readyz says not ready until it is: check that salt-master runs and that --master and its ports are right",
				"after", masterSlowConnect, "sub", subWatch.connected(), "dealer", dealerWatch.connected(),
				"master_pub", endpoint(c.cfg.MasterHost, c.cfg.MasterPubPort), "master_ret", endpoint(c.cfg.MasterHost, c.cfg.MasterRetPort))
		}
	})
	defer slow.Stop()
	sub := zmq4.NewSub(ctx, zmqOptions()...)
	if err := sub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		return fmt.Errorf("subscribe to the master: %w", err)
	}
	dealer := zmq4.NewDealer(ctx, zmqOptions()...)
	done := make(chan struct{}, 4)
	connected := make(chan struct{})
	go func() {
		defer func() { done <- struct{}{} }()
		if err := c.runSub(ctx, sub, subWatch); err != nil && !errors.Is(err, context.Canceled) {
			c.log.Error("master publication link stopped", "err", err)
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		if err := dialMaster(ctx, dealer, dealerWatch, c.cfg.MasterHost, c.cfg.MasterRetPort, c.log); err != nil {
			return
		}
		close(connected)
		c.runDealerRecv(ctx, dealer)
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		c.runDealerSend(ctx, dealer, connected)
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		c.refuseWhileUnreached(ctx, dealerWatch, unreachedCheckEvery)
	}()
	<-ctx.Done()
	_ = sub.Close()
	_ = dealer.Close()
	for range 4 {
		<-done
	}
	return nil
}

// unreachedCheckEvery is how often queued requests are checked against
// --master-timeout while the master was never reached: as often as the sweeper.
const unreachedCheckEvery = time.Second

// refuseWhileUnreached refuses requests that waited --master-timeout for a master
// the DEALER never reached (table.refuseUnreached), counts them
// (requests_total{result="no_master"}) and says so at most every staleLogEvery,
// until the DEALER has connected once.
func (c *Core) refuseWhileUnreached(ctx context.Context, dealer *masterWatch, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var lines ratelog.Limiter
	lines.Every = staleLogEvery
	unsaid := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if dealer.reachedOnce() {
			return
		}
		n := c.table.refuseUnreached(c.cfg.MasterTimeout)
		if n > 0 {
			c.metrics.requests.WithLabelValues("no_master").Add(float64(n))
			unsaid += n
		}
		if unsaid == 0 {
			continue
		}
		if ok, _ := lines.Allow("no_master", time.Now()); ok {
			queued, _ := c.table.queue()
			c.log.Warn("requests refused: they waited --master-timeout for a master this core has never reached; check that salt-master runs and that the core's --master and ports are right. The minions retry by themselves",
				"count", unsaid, "master_timeout", c.cfg.MasterTimeout, "master_ret", endpoint(c.cfg.MasterHost, c.cfg.MasterRetPort), "still_queued", queued)
			unsaid = 0
		}
	}
}
