package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
)

// zmq4 keeps no state an operator can see: it redials a lost master silently, and a
// socket whose master is down looks the same as one that is connected. So the core
// dials the master through a zmq4 transport of its own that counts each socket's
// open TCP connections: that count is what /readyz, the master_connected metric
// and the "lost the master" log lines report.

// watchTransport is the zmq4 transport name; its endpoints are
// "salt-broker-master://<watch id>@host:port".
const watchTransport = "salt-broker-master"

var (
	registerOnce sync.Once
	registerErr  error
	watches      sync.Map // watch id -> *masterWatch
	nextWatch    atomic.Uint64
)

// masterWatch counts the open connections of one zmq4 socket to the master.
type masterWatch struct {
	id       string
	socket   string // "SUB" or "DEALER", for logs and metrics
	open     atomic.Int64
	ever     atomic.Bool // a connection was open once
	onChange func(socket string, connected bool)
}

func newMasterWatch(socket string, onChange func(string, bool)) (*masterWatch, error) {
	registerOnce.Do(func() { registerErr = zmq4.RegisterTransport(watchTransport, watchingTCP{}) })
	if registerErr != nil {
		return nil, fmt.Errorf("register the master transport: %w", registerErr)
	}
	w := &masterWatch{id: strconv.FormatUint(nextWatch.Add(1), 10), socket: socket, onChange: onChange}
	watches.Store(w.id, w)
	return w, nil
}

// endpoint is what the socket dials to reach host:port through this watch.
func (w *masterWatch) endpoint(host string, port int) string {
	return watchTransport + "://" + w.id + "@" + net.JoinHostPort(host, strconv.Itoa(port))
}

func (w *masterWatch) connected() bool { return w.open.Load() > 0 }

// reachedOnce: the socket had a connection to the master at some point.
func (w *masterWatch) reachedOnce() bool { return w.ever.Load() }

// close unregisters the watch; connections still open count no more.
func (w *masterWatch) close() { watches.Delete(w.id) }

// watchingTCP is plain TCP whose connections report their open and close to their watch.
type watchingTCP struct{}

func (watchingTCP) Dial(ctx context.Context, dialer transport.Dialer, addr string) (net.Conn, error) {
	id, hostport, ok := strings.Cut(addr, "@")
	if !ok {
		return nil, fmt.Errorf("%s endpoint %q: want <watch>@host:port", watchTransport, addr)
	}
	c, err := dialer.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return nil, err
	}
	v, ok := watches.Load(id)
	if !ok {
		return c, nil // the core that dialed is stopping
	}
	w := v.(*masterWatch)
	w.ever.Store(true)
	if w.open.Add(1) == 1 {
		w.onChange(w.socket, true)
	}
	return &watchedConn{Conn: c, w: w}, nil
}

func (watchingTCP) Listen(context.Context, string) (net.Listener, error) {
	return nil, fmt.Errorf("%s: the core only dials the master", watchTransport)
}

func (watchingTCP) Addr(ep string) (string, error) { return ep, nil }

// watchedConn reports its end once: at Close, or at the first read or write error
// that is not a timeout — zmq4 drops a broken connection and redials without
// closing it (the same rule as its Conn.checkIO).
type watchedConn struct {
	net.Conn
	w    *masterWatch
	once sync.Once
}

func (c *watchedConn) ended() {
	c.once.Do(func() {
		if c.w.open.Add(-1) == 0 {
			c.w.onChange(c.w.socket, false)
		}
	})
}

func (c *watchedConn) failed(err error) {
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		c.ended()
	}
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.failed(err)
	return n, err
}

func (c *watchedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.failed(err)
	return n, err
}

func (c *watchedConn) Close() error {
	c.ended()
	return c.Conn.Close()
}

// masterLink is the state of the core's two sockets towards the master.
type masterLink struct {
	sub, dealer *masterWatch
}

func (l *masterLink) ready() bool {
	return l != nil && l.sub.connected() && l.dealer.connected()
}

// logMasterChange is the watches' onChange: a log line per change (the gauge reads the watches).
func (c *Core) logMasterChange(ctx context.Context, log *slog.Logger) func(string, bool) {
	var ever sync.Map // socket -> connected once
	return func(socket string, up bool) {
		_, again := ever.LoadOrStore(socket, true)
		switch {
		case up && again:
			log.Info("connected to the master again", "socket", socket)
		case up:
			log.Info("connected to the master", "socket", socket)
		case ctx.Err() != nil:
			log.Debug("closed the connection to the master: the core is stopping", "socket", socket)
		default:
			// A master shutting down can flap a connection several times in a few ms.
			c.warns.Log(log, slog.LevelWarn, "master lost "+socket, "lost the connection to the master; redialing every "+masterRetry.String()+" (check that salt-master runs and listens on its publish and ret ports)", "socket", socket)
		}
	}
}
