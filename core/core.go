// Package core is the master side of salt-broker: it connects SUB and DEALER to the
// Salt master, numbers every publication into a bounded replay ring, and serves edges
// over the tunnel: a publication stream resumed from each edge's cursor, and one
// stream per request, deduplicated by request ID so a re-sent request reaches the
// master at most once and gets its reply again.
package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/internal/ratelog"
	"github.com/salt-broker/salt-broker/internal/waitctx"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/tunnel"
)

// Defaults of the documented bounds.
const (
	DefaultRingAge      = 10 * time.Minute
	DefaultDedupTTL     = 30 * time.Minute
	DefaultDrainTimeout = 5 * time.Second
)

// Config is everything the core needs; cmd/broker fills it from flags.
type Config struct {
	Name          string // for logs and the hello; defaults to the host name
	MasterHost    string
	MasterPubPort int
	MasterRetPort int
	Listen        string // UDP and TCP, same port
	Tunnel        tunnel.Config
	// Certs, when set, supplies Tunnel.TLS and makes Reload possible (reload.go).
	Certs *certs.Store

	Ring           RingLimits
	Table          TableLimits
	MaxInFlight    int           // requests at the master at once
	MasterTimeout  time.Duration // a request the master has not answered by then is refused
	MaxMessageSize int           // bytes of one publication, request or reply
	WriteTimeout   time.Duration // a tunnel transfer that makes no progress for this long ends its stream (an idle, not an absolute, deadline)
	DrainTimeout   time.Duration // on stop, wait this long at most for requests in flight to be answered and confirmed; < 0: none

	// BulkInFlightBytes bounds the bytes of large replies in flight at once on one
	// edge connection; the others wait their turn (gate.go).
	BulkInFlightBytes int64

	Logger   *slog.Logger
	Registry prometheus.Registerer // nil: metrics are kept but not exported
}

// Defaults fills what is unset with the documented defaults.
func (c *Config) Defaults() {
	if c.MasterPubPort == 0 {
		c.MasterPubPort = 4505
	}
	if c.MasterRetPort == 0 {
		c.MasterRetPort = 4506
	}
	if c.Listen == "" {
		c.Listen = ":443"
	}
	if c.Ring.Count == 0 {
		c.Ring.Count = 100_000
	}
	if c.Ring.Bytes == 0 {
		c.Ring.Bytes = 256 << 20
	}
	if c.Ring.Age == 0 {
		c.Ring.Age = DefaultRingAge
	}
	if c.Table.Entries == 0 {
		c.Table.Entries = 100_000
	}
	if c.Table.ReplyBytes == 0 {
		c.Table.ReplyBytes = 512 << 20
	}
	if c.Table.TTL == 0 {
		c.Table.TTL = DefaultDedupTTL
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 256
	}
	if c.MasterTimeout == 0 {
		c.MasterTimeout = 2 * time.Minute
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = 64 << 20
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 30 * time.Second
	}
	if c.BulkInFlightBytes == 0 {
		c.BulkInFlightBytes = DefaultBulkInFlightBytes
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Core serves edges. Create it with New, then Run it.
type Core struct {
	cfg   Config
	log   *slog.Logger
	epoch uint64
	ln    *tunnel.Listener
	ring  *ring
	table *table
	slots chan struct{}
	// Closed when the core starts to stop: no request goes to the master after it.
	draining chan struct{}
	metrics  *metrics
	warns    ratelog.Limiter            // log lines a flood of requests repeats
	dupNames ratelog.Limiter            // "certificate name connected twice", per name (edgeconn.go)
	master   atomic.Pointer[masterLink] // set while runMaster runs

	mu       sync.Mutex
	edges    map[*edgeConn]struct{}
	sessions map[uint64]sessionOwner // edge sessions with a connection open, by EdgeSession
}

// New binds the tunnel listener, so the address is known before Run.
func New(cfg Config) (*Core, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MasterHost == "" {
		return nil, errors.New("the master's address is required (--master)")
	}
	if cfg.Certs != nil && cfg.Tunnel.TLS == nil {
		cfg.Tunnel.TLS = cfg.Certs.ServerTLS()
	}
	ln, err := tunnel.Listen(cfg.Listen, cfg.Tunnel)
	if err != nil {
		return nil, fmt.Errorf("listen for edges on %s: %w", cfg.Listen, err)
	}
	c := &Core{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "core"),
		epoch: wire.RandomID(),
		ln:    ln,
		ring:  newRing(cfg.Ring),
		table: newTable(cfg.Table),
		slots: make(chan struct{}, cfg.MaxInFlight), draining: make(chan struct{}),
		edges: make(map[*edgeConn]struct{}), sessions: make(map[uint64]sessionOwner),
	}
	c.dupNames.Every = dupNamesLogEvery
	c.metrics = newMetrics(c, cfg.Registry)
	return c, nil
}

// Addr is the UDP address edges dial.
func (c *Core) Addr() net.Addr { return c.ln.Addr() }

// TCPAddr is the TCP address of the fallback transport.
func (c *Core) TCPAddr() net.Addr { return c.ln.TCPAddr() }

// Run serves until ctx ends, drains (DrainTimeout), then closes everything it
// started.
func (c *Core) Run(ctx context.Context) error {
	// Everything runs on until the drain is over, not just until ctx ends.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	c.log.Info("core started", "listen_udp", c.ln.Addr(), "listen_tcp", c.ln.TCPAddr(),
		"master_pub", endpoint(c.cfg.MasterHost, c.cfg.MasterPubPort),
		"master_ret", endpoint(c.cfg.MasterHost, c.cfg.MasterRetPort), "epoch", c.epoch)

	var wg sync.WaitGroup
	masterFailed := make(chan error, 1)
	wg.Go(func() {
		if err := c.runMaster(runCtx); err != nil {
			masterFailed <- err
		}
	})
	wg.Go(func() { c.runSweeper(runCtx) })

	var sessions sync.WaitGroup
	accepting := make(chan struct{})
	wg.Go(func() {
		defer close(accepting)
		for {
			sess, err := c.ln.Accept(runCtx)
			if err != nil {
				if runCtx.Err() == nil {
					c.log.Error("accepting edges stopped", "err", err)
				}
				return
			}
			sessions.Go(func() { c.serveEdge(runCtx, sess) })
		}
	})
	var err error
	select {
	case <-ctx.Done():
		c.drain()
	case <-accepting:
	case err = <-masterFailed:
		// Without its master sockets the core can serve nothing: stop, and let the
		// service manager restart it.
		c.log.Error("the master link could not start; stopping", "err", err)
		err = fmt.Errorf("master link: %w", err)
	}
	cancel()
	<-accepting
	_ = c.ln.Close()
	c.table.shutdown()
	sessions.Wait()
	wg.Wait()
	c.log.Info("core stopped")
	return err
}

// drain waits, at most DrainTimeout, until the master has answered every request in
// flight and its edge has confirmed the reply: an edge re-sends what it has no reply
// for to the next core, which does not know it went to the master already. Nothing
// new goes to the master meanwhile; the edges re-send those requests to the next
// core.
func (c *Core) drain() {
	close(c.draining)
	n := c.table.unconfirmed()
	if c.cfg.DrainTimeout <= 0 || n == 0 {
		return
	}
	c.log.Info("stopping: waiting for the master to answer the requests in flight", "requests", n, "drain_timeout", c.cfg.DrainTimeout)
	if left := waitctx.Remaining(c.cfg.DrainTimeout, c.table.unconfirmed); left > 0 {
		c.log.Warn("stopping with requests unanswered after --drain-timeout; their edges re-send them to the next core, and the master may see them twice", "requests", left)
	}
}

// runSweeper times out requests at the master (freeing their slots) and refuses
// queued requests past their age budget, every second whatever the links do: a
// request waiting for a master that is slow, down or never connected expires too.
func (c *Core) runSweeper(ctx context.Context) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	stale := staleLog{log: c.log, every: staleLogEvery, queue: c.table.queue}
	defer func() { stale.flush(time.Now()) }()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.forgetSessions(c.table.now())
		timedOut, expired := c.table.sweep(c.cfg.MasterTimeout)
		for range timedOut {
			<-c.slots
		}
		if expired > 0 {
			c.metrics.requests.WithLabelValues("expired").Add(float64(expired))
		}
		stale.add(expired, time.Now())
	}
}

const (
	// dupNamesLogEvery rate-limits the warning about two edges sharing a name: a
	// misconfiguration worth a line a minute, not one per reconnect.
	dupNamesLogEvery = time.Minute
	// sweepEvery is how often runSweeper times out and expires requests: budgets
	// are seconds to minutes, so a second of lateness is within their slack.
	sweepEvery = time.Second
)

// maxRecord is the largest tunnel record: one message plus its framing.
func (c *Core) maxRecord() int { return c.cfg.MaxMessageSize + wire.FrameSlack }
