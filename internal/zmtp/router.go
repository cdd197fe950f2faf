package zmtp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
)

// Errors of Router.Send and Recv.
var (
	ErrUnknownPeer = errors.New("zmtp: no peer with that identity")
	ErrQueueFull   = errors.New("zmtp: peer's send queue is full")
	errQueueBytes  = fmt.Errorf("%w (its byte bound, SendQueueBytes)", ErrQueueFull)
	ErrClosed      = errors.New("zmtp: server closed")
)

// Message is one message a Router received.
type Message struct {
	Identity []byte
	Frames   [][]byte
	Remote   string
	// First: the first message of its connection. The router owns the set of open
	// connections; a caller that needs "a new socket's first request" (the edge's
	// retry rules) reads it here rather than keeping a copy of that set.
	First bool
}

// Router is a ROUTER socket server.
type Router struct {
	s      *server
	in     chan Message
	nextID atomic.Uint32

	idMu sync.Mutex
	byID map[string]*peer
}

// ListenRouter listens on addr (host:port) and serves ROUTER.
func ListenRouter(addr string, o Options) (*Router, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return NewRouter(ln, o), nil
}

// NewRouter serves ROUTER on ln, which it owns from now on.
func NewRouter(ln net.Listener, o Options) *Router {
	s := newServer(kindRouter, ln, o)
	r := &Router{s: s, in: make(chan Message, s.opts.RecvQueue), byID: map[string]*peer{}}
	r.nextID.Store(rand.Uint32())
	s.onReady = r.register
	s.onGone = r.unregister
	s.onMsg = func(p *peer, frames [][]byte) bool {
		// A full RecvQueue holds this peer's reader, and so its TCP window: back
		// pressure on the sender rather than drops or unbounded memory.
		first := p.received == 0
		p.received++
		select {
		case r.in <- Message{Identity: p.identity, Frames: frames, Remote: p.remote, First: first}:
			return true
		case <-p.done:
			return false
		}
	}
	s.start()
	return r
}

// register gives an anonymous peer a libzmq-style 5-byte identity, and lets a peer
// that announces a taken identity take it over (ROUTER_HANDOVER).
func (r *Router) register(p *peer) bool {
	r.idMu.Lock()
	var old *peer
	if len(p.identity) == 0 || p.identity[0] == 0 {
		// libzmq reserves identities starting with a zero byte for the ones it makes.
		for {
			id := binary.BigEndian.AppendUint32([]byte{0}, r.nextID.Add(1))
			if r.byID[string(id)] == nil {
				p.identity = id
				break
			}
		}
	} else if old = r.byID[string(p.identity)]; old != nil {
		delete(r.byID, string(p.identity))
		old.shutdown()
	}
	r.byID[string(p.identity)] = p
	r.idMu.Unlock()
	if old != nil {
		// A peer reconnecting in a loop with one identity must not flood the log.
		r.s.logLimited(slog.LevelInfo, "handover", "identity handed over to a new connection", "identity", string(p.identity), "old", old.remote, "new", p.remote)
	}
	return true
}

func (r *Router) unregister(p *peer) {
	r.idMu.Lock()
	current := r.byID[string(p.identity)] == p
	if current {
		delete(r.byID, string(p.identity))
	}
	r.idMu.Unlock()
	if current && r.s.opts.OnPeerGone != nil {
		r.s.opts.OnPeerGone(p.identity)
	}
}

// Recv returns the next message from any peer.
func (r *Router) Recv(ctx context.Context) (Message, error) {
	select {
	case m := <-r.in:
		return m, nil
	case <-ctx.Done():
		return Message{}, ctx.Err()
	case <-r.s.ctx.Done():
		return Message{}, ErrClosed
	}
}

// Send queues frames to the peer with identity. It never blocks.
func (r *Router) Send(identity []byte, frames [][]byte) error {
	if r.s.ctx.Err() != nil {
		return ErrClosed
	}
	r.idMu.Lock()
	p := r.byID[string(identity)]
	r.idMu.Unlock()
	if p == nil {
		r.s.countDrop("unknown_peer", 1)
		return ErrUnknownPeer
	}
	switch p.enqueue(dataItem(frames)) {
	case queueFull:
		r.s.countDrop(queueFull, 1)
		return ErrQueueFull
	case queueBytes:
		r.s.countDrop(queueBytes, 1)
		r.s.warn(queueBytes, "reply dropped: the peer is not reading and its send queue is at its byte bound", "remote", p.remote,
			"queued_bytes", p.queuedBytes(), "limit", r.s.opts.SendQueueBytes)
		return errQueueBytes
	}
	return nil
}

// Addr is the listening address.
func (r *Router) Addr() net.Addr { return r.s.ln.Addr() }

// Stats returns the counters.
func (r *Router) Stats() Stats { return r.s.stats() }

// Close stops accepting and disconnects every peer.
func (r *Router) Close() error { return r.s.close() }
