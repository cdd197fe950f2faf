package zmtp

import (
	"fmt"
	"net"
)

// Limits on one SUB's subscriptions: every Publish checks each peer's subscriptions,
// so a peer with a million of them would slow fan-out for everyone. Salt minions use
// one to three short topics.
const (
	maxSubscriptions = 1024
	maxTopicLen      = 1024
)

var errSubscriptions = fmt.Errorf("more than %d subscriptions, or a topic over %d bytes", maxSubscriptions, maxTopicLen)

func (p *peer) subscribe(topic string, on bool) error {
	p.subMu.Lock()
	defer p.subMu.Unlock()
	if on && (len(topic) > maxTopicLen || (p.subs[topic] == 0 && topic != "" && len(p.subs) >= maxSubscriptions)) {
		return errSubscriptions
	}
	switch {
	case topic == "" && on:
		p.all++
	case topic == "":
		p.all = max(0, p.all-1)
	case on:
		p.subs[topic]++
	case p.subs[topic] > 1:
		p.subs[topic]--
	default:
		delete(p.subs, topic)
	}
	return nil
}

// subscribeOrClose applies a subscription change; false (peer over the limits,
// logged and counted) ends the connection.
func (s *server) subscribeOrClose(p *peer, topic string, on bool) bool {
	if err := p.subscribe(topic, on); err != nil {
		s.countDrop("subscriptions", 1)
		s.warn("subscriptions", "subscriber over the subscription limits; connection closed", "remote", p.remote, "err", err)
		return false
	}
	return true
}

func (p *peer) matches(topic []byte) bool {
	p.subMu.RLock()
	defer p.subMu.RUnlock()
	if p.all > 0 {
		return true
	}
	for sub := range p.subs {
		if len(topic) >= len(sub) && string(topic[:len(sub)]) == sub {
			return true
		}
	}
	return false
}

// Pub is a PUB socket server: Publish fans a message out to every subscribed peer.
type Pub struct{ s *server }

// ListenPub listens on addr (host:port) and serves PUB.
func ListenPub(addr string, o Options) (*Pub, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return NewPub(ln, o), nil
}

// NewPub serves PUB on ln, which it owns from now on.
func NewPub(ln net.Listener, o Options) *Pub {
	s := newServer(kindPub, ln, o)
	s.onReady = func(*peer) bool { return true }
	s.onGone = func(*peer) {}
	s.onMsg = func(p *peer, frames [][]byte) bool {
		// ZMTP 3.0 subscriptions are data messages: 0x01 topic / 0x00 topic.
		if len(frames) == 1 && len(frames[0]) > 0 && frames[0][0] <= 1 {
			return s.subscribeOrClose(p, string(frames[0][1:]), frames[0][0] == 1)
		}
		return true
	}
	s.start()
	return &Pub{s: s}
}

// Publish queues msg to every peer whose subscription is a prefix of msg's first
// frame. It never blocks: a peer whose queue is full, by count or by bytes, misses
// this message (counted; the byte bound's drops also logged, rate-limited).
// The frames are shared by all peers and must not be changed afterwards.
func (p *Pub) Publish(msg [][]byte) {
	if len(msg) == 0 {
		return
	}
	it := dataItem(msg)
	var full, overBytes uint64
	var example *peer
	p.s.mu.RLock()
	for peer := range p.s.peers {
		if !peer.matches(msg[0]) {
			continue
		}
		switch peer.enqueue(it) {
		case queueFull:
			full++
		case queueBytes:
			overBytes++
			example = peer
		}
	}
	p.s.mu.RUnlock()
	if full > 0 {
		p.s.countDrop(queueFull, full)
	}
	if overBytes > 0 {
		p.s.countDrop(queueBytes, overBytes)
		p.s.warn(queueBytes, "subscriber not keeping up: its send queue is at its byte bound, so it misses publications until it catches up",
			"remote", example.remote, "subscribers", overBytes, "queued_bytes", example.queuedBytes(), "limit", p.s.opts.SendQueueBytes)
	}
}

// Addr is the listening address.
func (p *Pub) Addr() net.Addr { return p.s.ln.Addr() }

// Stats returns the counters.
func (p *Pub) Stats() Stats { return p.s.stats() }

// Close stops accepting and disconnects every peer.
func (p *Pub) Close() error { return p.s.close() }
