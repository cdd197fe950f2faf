// Package edge is the minion side of salt-broker: it serves the minions' ZeroMQ
// sockets (PUB on the publish port, ROUTER on the ret port, through the hardened
// internal/zmtp server) and carries them over one tunnel session to the core: one
// connection, or a pool of them where one congestion window is not enough (pool.go,
// sizer.go). It keeps every request until its reply arrives, re-sending it under the
// same ID on another connection, and resumes the publication stream from its cursor.
package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/internal/ratelog"
	"github.com/salt-broker/salt-broker/internal/waitctx"
	"github.com/salt-broker/salt-broker/internal/wire"
	"github.com/salt-broker/salt-broker/internal/zmtp"
	"github.com/salt-broker/salt-broker/tunnel"
)

// Defaults of the request class policy.
const (
	DefaultAuthMaxAge    = 30 * time.Second
	DefaultRequestMaxAge = 15 * time.Minute
	DefaultRetryWindow   = time.Second
	DefaultDrainTimeout  = 5 * time.Second
	// DefaultMaxPendingBytes bounds the request table's memory. Salt's requests are
	// ~0.5–5 KB (returns; a file request is small, its reply is not held), so 256
	// MiB holds the 20,000 requests of --max-pending at 13 KB each, and still four
	// requests of the largest size (--max-message-size 64 MiB), while staying a
	// small part of a host's memory.
	DefaultMaxPendingBytes = 256 << 20
	// DefaultMaxConnections caps the pool: enough windows to carry a site's
	// returns over a path with a few per cent of random loss, where one Reno window
	// carries ~30 KB/s at 300 ms (Mathis), and few enough that a stuck sizer could
	// not flood a path.
	DefaultMaxConnections = 8
)

// Config is everything the edge needs; cmd/broker fills it from flags.
type Config struct {
	Name     string // for logs and the hello; defaults to the host name
	CoreAddr string // host:port of the core
	Bind     string // address minions use as `master`
	PubPort  int    // the port the master announces as publish_port
	RetPort  int    // the master's ret_port
	Tunnel   tunnel.Config
	Dial     tunnel.DialOptions
	ZMTP     zmtp.Options
	StateDir string // where the publication cursor survives restarts; "" = not kept

	// Certs, when set, supplies the TLS of each new connection and makes Reload
	// possible (reload.go).
	Certs *certs.Store

	MaxPending        int           // requests held unanswered; past it new ones are dropped (the minion retries)
	MaxPendingBytes   int64         // bytes of the requests held; past it new ones are dropped too (a request alone always fits)
	AuthMaxAge        time.Duration // an auth request older than this is stale: the minion has retried already
	RequestMaxAge     time.Duration // any other request older than this is dropped unsent
	MaxMessageSize    int
	WriteTimeout      time.Duration
	PingInterval      time.Duration // control-stream pings: RTT and liveness
	StallTimeout      time.Duration // no pong for this long: the connection is stalled, probe for a new one
	ProbeInterval     time.Duration // while down, a fresh connection attempt is started this often
	MaxBackoff        time.Duration // after long failure, attempts slow down to this
	ReplayHold        time.Duration // after a restart, wait this long at most for minions to re-subscribe before replaying
	QUICProbeInterval time.Duration // on the TCP fallback in auto mode, try QUIC this often
	RetryWindow       time.Duration // a request this soon after its minion's socket closed with one unanswered may be that one's retry
	MaxRetryChain     int           // tries in one minion retry chain (Salt's return_retry_tries)
	DrainTimeout      time.Duration // on stop, wait this long at most for the replies to requests already sent; < 0: none
	// MaxConnections caps the pool of connections of the edge session (sizer.go);
	// the pool never has more than the minions connected either.
	MaxConnections int

	Logger   *slog.Logger
	Registry prometheus.Registerer
}

// Defaults fills what is unset with the documented defaults.
func (c *Config) Defaults() {
	if c.Bind == "" {
		c.Bind = "0.0.0.0"
	}
	if c.PubPort == 0 {
		c.PubPort = 4505
	}
	if c.RetPort == 0 {
		c.RetPort = 4506
	}
	if c.MaxPending == 0 {
		c.MaxPending = 20_000
	}
	if c.MaxPendingBytes == 0 {
		c.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if c.AuthMaxAge == 0 {
		c.AuthMaxAge = DefaultAuthMaxAge
	}
	if c.RequestMaxAge == 0 {
		c.RequestMaxAge = DefaultRequestMaxAge
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = 64 << 20
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 30 * time.Second
	}
	if c.PingInterval == 0 {
		c.PingInterval = 250 * time.Millisecond
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = 2 * time.Second
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = 500 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 10 * time.Second
	}
	if c.ReplayHold == 0 {
		c.ReplayHold = 15 * time.Second
	}
	if c.QUICProbeInterval == 0 {
		c.QUICProbeInterval = 30 * time.Second
	}
	if c.RetryWindow == 0 {
		c.RetryWindow = DefaultRetryWindow
	}
	if c.MaxRetryChain == 0 {
		c.MaxRetryChain = 3
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.ZMTP.MaxMessageSize == 0 {
		c.ZMTP.MaxMessageSize = int64(c.MaxMessageSize)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ZMTP.Logger == nil {
		c.ZMTP.Logger = c.Logger.With("component", "zmtp")
	}
}

// Edge serves minions. Create it with New (which binds the minion ports), then Run it.
type Edge struct {
	cfg     Config
	log     *slog.Logger
	session uint64
	pub     *zmtp.Pub
	router  *zmtp.Router
	reqs    *reqTable
	cursor  *cursorState
	metrics *metrics
	warns   ratelog.Limiter // log lines a flood of minions or refusals repeats

	dialer *tunnel.Dialer // every connection of the session, one UDP socket for QUIC
	pool   *pool          // the live connections
	outage *outage        // since when and why the core cannot be reached (outage.go)
}

// New binds the minion-facing PUB and ROUTER at once, whether or not the core is reachable.
func New(cfg Config) (*Edge, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.CoreAddr == "" {
		return nil, errors.New("the core's address is required (--core host:port)")
	}
	e := &Edge{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "edge"),
		session: wire.RandomID(),
	}
	e.pool = newPool(e)
	e.outage = newOutage(e.log, cfg.CoreAddr, cfg.Dial.Mode)
	e.reqs = newReqTable(e)
	e.metrics = newMetrics(e, cfg.Registry) // before the sockets: their callbacks count
	cs, err := loadCursor(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	e.cursor = cs
	if cfg.Certs != nil && cfg.Tunnel.TLS == nil && cfg.Tunnel.TLSFunc == nil {
		cfg.Tunnel.TLSFunc = cfg.Certs.ClientTLS
	}
	if e.dialer, err = tunnel.NewDialer(cfg.Tunnel, cfg.Dial); err != nil {
		return nil, err
	}
	zo := cfg.ZMTP
	zo.OnPeerGone = e.reqs.peerGone
	pubAddr := net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.PubPort))
	if e.pub, err = zmtp.ListenPub(pubAddr, zo); err != nil {
		return nil, fmt.Errorf("bind the minions' publish port %s: %w", pubAddr, err)
	}
	retAddr := net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.RetPort))
	if e.router, err = zmtp.ListenRouter(retAddr, zo); err != nil {
		_ = e.pub.Close()
		return nil, fmt.Errorf("bind the minions' ret port %s: %w", retAddr, err)
	}
	return e, nil
}

// PubAddr is where minions' SUB sockets connect.
func (e *Edge) PubAddr() net.Addr { return e.pub.Addr() }

// RetAddr is where minions' REQ sockets connect.
func (e *Edge) RetAddr() net.Addr { return e.router.Addr() }

// Run serves until ctx ends, drains (DrainTimeout), then closes the minion sockets
// and the tunnel.
func (e *Edge) Run(ctx context.Context) error {
	// Everything runs on until the drain is over, not just until ctx ends.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	e.log.Info("edge started", "pub", e.pub.Addr(), "ret", e.router.Addr(), "core", e.cfg.CoreAddr,
		"transport", e.cfg.Dial.Mode, "edge_session", fmt.Sprintf("%016x", e.session))
	var wg sync.WaitGroup
	wg.Go(func() { e.recvLoop(runCtx) })
	wg.Go(func() { e.dispatchLoop(runCtx) })
	wg.Go(func() { e.reqs.expireLoop(runCtx, expireEvery) }) // the class policy, link up or not
	wg.Go(func() { e.cursor.saveLoop(runCtx, e.log, e.pub) })
	wg.Go(func() { e.connectLoop(runCtx) })
	wg.Go(func() { e.pubLoop(runCtx) })
	wg.Go(func() { e.sizerLoop(runCtx) })
	<-ctx.Done()
	e.drain()
	cancel()
	// Counted before their sockets close: the restarted edge holds its replay until
	// as many minions are back (a Salt minion may take 10 s to reconnect).
	minions := int(e.pub.Stats().Peers)
	_ = e.router.Close()
	_ = e.pub.Close()
	wg.Wait()
	_ = e.dialer.Close() // every connection has ended and said why
	if err := e.cursor.save(minions); err != nil {
		e.log.Error("saving the publication cursor failed; after a restart this edge resumes from the core's head", "err", err)
	}
	e.log.Info("edge stopped")
	return nil
}

// drain waits, at most DrainTimeout, until every request sent to the core has its
// reply, so a restart does not make minions retry returns the master already has (it
// would see them twice). Nothing more is sent meanwhile: requests not yet sent die
// with the edge, and their minions retry them through the next one.
func (e *Edge) drain() {
	e.reqs.startDrain()
	sent := e.reqs.sentUnanswered()
	if e.cfg.DrainTimeout <= 0 || sent == 0 {
		return
	}
	if e.pool.size() == 0 {
		e.log.Warn("stopping with requests unanswered and no connection to the core; their minions will retry", "pending_requests", sent)
		return
	}
	e.log.Info("stopping: waiting for the replies to requests already sent", "pending_requests", sent, "drain_timeout", e.cfg.DrainTimeout)
	if left := waitctx.Remaining(e.cfg.DrainTimeout, e.reqs.sentUnanswered); left > 0 {
		e.log.Warn("stopping with requests unanswered after --drain-timeout; their minions will retry", "pending_requests", left)
	}
}

// CloseConnection ends the pool's connection in slot now, as if it had died: its
// requests are re-sent on the others and the publication stream, if it ran there,
// moves to another. For testing failover (POST /debug/close-connection?conn=N).
// False when the pool has no connection in slot.
func (e *Edge) CloseConnection(slot uint32) bool { return e.pool.closeConn(slot) }
