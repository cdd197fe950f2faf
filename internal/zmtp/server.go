// Package zmtp is the edge's hardened ZeroMQ server: ZMTP 3.0/3.1 with the NULL
// mechanism, PUB and ROUTER only, written for sockets that face every minion of a
// site and anything else on its LAN. Each peer has its own reader and writer with a
// bounded queue, a handshake deadline and write deadlines, and every message has a
// maximum size checked before allocation, so one bad or slow peer can never hurt
// another (zmq4 v0.17.0 fails exactly there: see DESIGN §5).
package zmtp

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/salt-broker/salt-broker/internal/ratelog"
)

// Stats are a server's counters.
type Stats struct {
	Peers             int64
	PeersAccepted     uint64
	BytesIn, BytesOut uint64
	MsgsIn, MsgsOut   uint64
	QueuedBytes       int64 // data payload bytes queued or being written to the peers now
	Drops             map[string]uint64
	HandshakeFailures map[string]uint64
}

type kind int

const (
	kindPub kind = iota
	kindRouter
)

func (k kind) socketType() string {
	if k == kindPub {
		return "PUB"
	}
	return "ROUTER"
}

func (k kind) accepts(peer string) bool {
	switch k {
	case kindPub:
		return peer == "SUB" || peer == "XSUB"
	default:
		return peer == "REQ" || peer == "DEALER" || peer == "ROUTER"
	}
}

// server is what PUB and ROUTER share: accepting, handshakes, peer goroutines, counters.
type server struct {
	kind  kind
	opts  Options
	ln    net.Listener
	log   *slog.Logger
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	conns atomic.Int64 // connections open, handshaking ones included

	mu    sync.RWMutex
	peers map[*peer]struct{}

	onReady func(p *peer) bool // registers a peer after its handshake; false refuses it
	onGone  func(p *peer)
	onMsg   func(p *peer, frames [][]byte) bool // false ends the connection

	peersNow                                     atomic.Int64
	accepted, bytesIn, bytesOut, msgsIn, msgsOut atomic.Uint64
	statMu                                       sync.Mutex
	drops, hsFail                                map[string]uint64

	// Per-connection warnings, each event kind once a second at most: a flood of bad
	// connections must not become a flood of log lines.
	warns ratelog.Limiter
}

// warn logs a per-connection event at most once a second per event kind, saying
// how many like it were left out.
func (s *server) warn(event, msg string, args ...any) {
	s.logLimited(slog.LevelWarn, event, msg, args...)
}

func (s *server) logLimited(level slog.Level, event, msg string, args ...any) {
	s.warns.Log(s.log, level, event, msg, args...)
}

func newServer(k kind, ln net.Listener, o Options) *server {
	o = o.withDefaults(k)
	ctx, cancel := context.WithCancel(context.Background())
	return &server{
		kind: k, opts: o, ln: ln, ctx: ctx, stop: cancel,
		log:   o.Logger.With("socket", k.socketType(), "addr", ln.Addr().String()),
		peers: map[*peer]struct{}{}, drops: map[string]uint64{}, hsFail: map[string]uint64{},
	}
}

func (s *server) countDrop(cause string, n uint64) {
	s.statMu.Lock()
	s.drops[cause] += n
	s.statMu.Unlock()
}

func (s *server) stats() Stats {
	var queuedBytes int64
	s.mu.RLock()
	for p := range s.peers {
		queuedBytes += p.queuedBytes()
	}
	s.mu.RUnlock()
	s.statMu.Lock()
	defer s.statMu.Unlock()
	st := Stats{
		Peers: s.peersNow.Load(), PeersAccepted: s.accepted.Load(),
		BytesIn: s.bytesIn.Load(), BytesOut: s.bytesOut.Load(), MsgsIn: s.msgsIn.Load(), MsgsOut: s.msgsOut.Load(),
		QueuedBytes: queuedBytes,
		Drops:       map[string]uint64{}, HandshakeFailures: map[string]uint64{},
	}
	for k, v := range s.drops {
		st.Drops[k] = v
	}
	for k, v := range s.hsFail {
		st.HandshakeFailures[k] = v
	}
	return st
}

// The accept loop's backoff after an error (EMFILE and the like): it recovers at
// once when the error clears, and never spins while it lasts.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

func (s *server) start() { s.wg.Go(s.acceptLoop) }

func (s *server) acceptLoop() {
	backoff := acceptBackoffMin
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			// Out of file descriptors and the like: wait a little and go on, never spin.
			s.log.Warn("accept failed; retrying", "err", err)
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return
			}
			backoff = min(backoff*2, acceptBackoffMax)
			continue
		}
		backoff = acceptBackoffMin
		if s.conns.Add(1) > int64(s.opts.MaxPeers) {
			s.conns.Add(-1)
			s.countDrop("max_peers", 1)
			s.warn("max_peers", "connection refused: too many peers; raise --max-minions if this is a real load", "remote", c.RemoteAddr(), "limit", s.opts.MaxPeers)
			_ = c.Close()
			continue
		}
		s.accepted.Add(1)
		s.wg.Go(func() { s.serve(c) })
	}
}

func (s *server) close() error {
	s.stop()
	err := s.ln.Close()
	s.mu.RLock()
	for p := range s.peers {
		p.shutdown()
	}
	s.mu.RUnlock()
	s.wg.Wait()
	return err
}

// serve runs one connection: handshake, then the reader, with a writer beside it.
func (s *server) serve(c net.Conn) {
	defer s.conns.Add(-1)
	p := &peer{s: s, conn: c, remote: c.RemoteAddr().String(), notify: make(chan struct{}, 1), done: make(chan struct{})}
	defer p.shutdown()
	stop := context.AfterFunc(s.ctx, p.shutdown)
	defer stop()

	br := bufio.NewReaderSize(c, s.opts.ReadBufferSize)
	props, err := s.handshake(c, br)
	if err != nil {
		// Only what the peer sent can be a bad greeting; any other error is the
		// connection going away (EOF, or a reset: Salt's minion probes the ret port
		// with a bare TCP connect and close before it starts, salt-wire-facts §1).
		cause := causeClosed
		var he *handshakeError
		switch {
		case errors.As(err, &he):
			cause = he.cause
		case errors.Is(err, os.ErrDeadlineExceeded):
			cause = causeTimeout
		}
		s.statMu.Lock()
		s.hsFail[cause]++
		s.statMu.Unlock()
		if cause != causeClosed {
			s.warn("handshake_"+cause, "ZeroMQ handshake failed; connection closed", "remote", p.remote, "cause", cause, "err", err)
		}
		return
	}
	p.identity = props["Identity"]
	if s.kind == kindPub {
		p.subs = map[string]int{}
	}
	if !s.onReady(p) {
		return
	}
	s.mu.Lock()
	s.peers[p] = struct{}{}
	s.mu.Unlock()
	s.peersNow.Add(1)
	defer func() {
		s.mu.Lock()
		delete(s.peers, p)
		s.mu.Unlock()
		s.peersNow.Add(-1)
		s.onGone(p)
	}()

	var wg sync.WaitGroup
	defer wg.Wait()
	defer p.shutdown()
	wg.Go(func() { s.writeLoop(p) })
	s.readLoop(p, br)
}
