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
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/salt-broker/salt-broker/internal/ratelog"
)

// Options bound and tune a server. Zero values take the defaults.
type Options struct {
	HandshakeTimeout  time.Duration // greeting and READY must complete within this (10s)
	MaxMessageSize    int64         // bytes of one message, frames summed (64 MiB)
	MaxPeers          int           // connections at once; more are closed at accept (20000)
	SendQueue         int           // messages queued per peer (1000, like libzmq's HWM)
	SendQueueBytes    int64         // data bytes queued or being written per peer (PUB 8 MiB, ROUTER MaxMessageSize); one message always fits an empty queue
	WriteTimeout      time.Duration // a peer not reading for this long is disconnected (15s)
	ReadBufferSize    int           // per-peer read buffer (4 KiB)
	RecvQueue         int           // ROUTER: messages waiting for Recv, all peers (4096)
	HeartbeatInterval time.Duration // send PING this often (0: never; PINGs are always answered)
	HeartbeatTimeout  time.Duration // drop a peer silent this long after our PING (3 × interval)
	Logger            *slog.Logger
	// OnPeerGone (ROUTER) is called once when the connection holding an identity ends;
	// not for a connection whose identity a newer one took over, as that identity is
	// still connected. It must not block.
	OnPeerGone func(identity []byte)
}

// defaultPubQueueBytes bounds what one slow subscriber pins. Salt's publications
// are ~0.5 KB to a few KB (a job with large arguments more), so 8 MiB still holds
// the 1,000-message count bound of ordinary jobs and only binds on large ones; and
// a publication's frames are shared by every subscriber, so subscribers falling
// behind together pin much the same few MiB, not 8 MiB each.
const defaultPubQueueBytes = 8 << 20

func (o Options) withDefaults(k kind) Options {
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = 64 << 20
	}
	if o.MaxPeers == 0 {
		o.MaxPeers = 20_000
	}
	if o.SendQueue == 0 {
		o.SendQueue = 1000
	}
	if o.SendQueueBytes == 0 {
		// A REQ peer has one reply queued at a time: ROUTER's bound only stops a
		// pipelining DEALER, and must never stop a reply of the largest size.
		o.SendQueueBytes = defaultPubQueueBytes
		if k == kindRouter {
			o.SendQueueBytes = o.MaxMessageSize
		}
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 15 * time.Second
	}
	if o.ReadBufferSize == 0 {
		o.ReadBufferSize = 4 << 10
	}
	if o.RecvQueue == 0 {
		o.RecvQueue = 4096
	}
	if o.HeartbeatInterval > 0 && o.HeartbeatTimeout == 0 {
		o.HeartbeatTimeout = 3 * o.HeartbeatInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Errors of Router.Send and Recv.
var (
	ErrUnknownPeer = errors.New("zmtp: no peer with that identity")
	ErrQueueFull   = errors.New("zmtp: peer's send queue is full")
	errQueueBytes  = fmt.Errorf("%w (its byte bound, SendQueueBytes)", ErrQueueFull)
	ErrClosed      = errors.New("zmtp: server closed")
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

func (s *server) start() { s.wg.Go(s.acceptLoop) }

func (s *server) acceptLoop() {
	backoff := 5 * time.Millisecond
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
			backoff = min(backoff*2, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
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

// item is one queued outbound message.
type item struct {
	frames  [][]byte
	command bool
	size    int64 // payload bytes of a data message, counted against SendQueueBytes
}

// dataItem is a data message to queue, its size counted.
func dataItem(frames [][]byte) item {
	var n int64
	for _, f := range frames {
		n += int64(len(f))
	}
	return item{frames: frames, size: n}
}

// peer is one connection. Its reader runs in serve; its writer in writeLoop.
type peer struct {
	s        *server
	conn     net.Conn
	remote   string
	identity []byte

	qmu    sync.Mutex
	queue  []item
	qBytes int64         // sizes of the data messages queued or in the batch being written
	notify chan struct{} // cap 1: the writer has work
	done   chan struct{}
	once   sync.Once

	subMu sync.RWMutex
	subs  map[string]int // PUB: subscription → count
	all   int            // PUB: count of "" subscriptions

	lastRecv atomic.Int64
}

func (p *peer) shutdown() {
	p.once.Do(func() {
		close(p.done)
		_ = p.conn.Close()
	})
}

// Why enqueue refused a message.
const (
	queued     = ""
	queueFull  = "queue_full"  // SendQueue messages
	queueBytes = "queue_bytes" // SendQueueBytes
)

// enqueue adds a message unless the queue is full, by count or by bytes; it says
// which bound refused it. The bytes being written count until the write ends, so
// the bound is what a peer that stopped reading pins; commands (PONG, PING) are
// bounded by count alone. A message into a queue holding no data always fits.
func (p *peer) enqueue(it item) string {
	p.qmu.Lock()
	if len(p.queue) >= p.s.opts.SendQueue {
		p.qmu.Unlock()
		return queueFull
	}
	if p.qBytes > 0 && p.qBytes+it.size > p.s.opts.SendQueueBytes {
		p.qmu.Unlock()
		return queueBytes
	}
	p.queue = append(p.queue, it)
	p.qBytes += it.size
	p.qmu.Unlock()
	select {
	case p.notify <- struct{}{}:
	default:
	}
	return queued
}

// written releases the bytes of a batch the writer is done with.
func (p *peer) written(batch []item) {
	var n int64
	for _, it := range batch {
		n += it.size
	}
	if n == 0 {
		return
	}
	p.qmu.Lock()
	p.qBytes -= n
	p.qmu.Unlock()
}

// queuedBytes is what enqueue counts against SendQueueBytes now.
func (p *peer) queuedBytes() int64 {
	p.qmu.Lock()
	defer p.qmu.Unlock()
	return p.qBytes
}

func (p *peer) take() []item {
	p.qmu.Lock()
	defer p.qmu.Unlock()
	q := p.queue
	p.queue = nil
	return q
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

// handshake exchanges greetings and READY within the handshake deadline.
func (s *server) handshake(c net.Conn, br *bufio.Reader) (map[string][]byte, error) {
	_ = c.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(greeting()); err != nil {
		return nil, err
	}
	g := make([]byte, greetingLen)
	// The first byte tells ZMTP 3 (0xFF) from ZMTP 1.0 or a foreign protocol, and
	// bytes 0-9 from ZMTP 2.0: refuse at once, as libzmq does, without waiting for more.
	if _, err := io.ReadFull(br, g[:1]); err != nil {
		return nil, err
	}
	if g[0] != 0xff {
		return nil, hsErr(causeBadGreeting, "not a ZMTP 3 greeting (ZMTP 1.0/2.0 peers, libzmq < 4, are not supported; or not ZeroMQ at all)")
	}
	if _, err := io.ReadFull(br, g[1:10]); err != nil {
		return nil, err
	}
	if g[9]&0x01 == 0 {
		return nil, hsErr(causeBadGreeting, "not a ZMTP 3 greeting (ZMTP 1.0/2.0 peers, libzmq < 4, are not supported; or not ZeroMQ at all)")
	}
	// A ZMTP 2.0 peer sends its revision byte and waits: refuse it on that byte
	// rather than waiting out the handshake timeout for a 64-byte greeting.
	if _, err := io.ReadFull(br, g[10:11]); err != nil {
		return nil, err
	}
	if g[10] < 3 {
		return nil, hsErr(causeBadVersion, "ZMTP revision %d peer: only ZMTP 3.x is supported (upgrade the peer's libzmq to 4.x)", g[10])
	}
	if _, err := io.ReadFull(br, g[11:]); err != nil {
		return nil, err
	}
	if _, err := parseGreeting(g); err != nil {
		return nil, err
	}
	ready := readyBody(map[string][]byte{"Socket-Type": []byte(s.kind.socketType())})
	bw := bufio.NewWriterSize(c, 64)
	if err := writeMessage(bw, [][]byte{ready}, true); err != nil {
		return nil, err
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	fr := frameReader{r: br, maxMessage: 64 << 10} // READY metadata is small
	frames, isCmd, err := fr.readMessage()
	if err != nil {
		if errors.Is(err, errTooBig) {
			return nil, hsErr(causeBadReady, "READY command too large: %v", err)
		}
		return nil, err
	}
	if !isCmd {
		return nil, hsErr(causeBadReady, "expected READY, got a data frame")
	}
	name, data, err := parseCommand(frames[0])
	if err != nil {
		return nil, hsErr(causeBadReady, "%v", err)
	}
	if name == "ERROR" {
		return nil, hsErr(causeBadReady, "peer sent ERROR: %q", data)
	}
	if name != "READY" {
		return nil, hsErr(causeBadReady, "expected READY, got %q", name)
	}
	props, err := parseProperties(data)
	if err != nil {
		return nil, hsErr(causeBadReady, "%v", err)
	}
	if st := string(props["Socket-Type"]); !s.kind.accepts(st) {
		return nil, hsErr(causeBadSocketType, "a %s socket cannot talk to %s (wrong port?)", st, s.kind.socketType())
	}
	if len(props["Identity"]) > 255 {
		return nil, hsErr(causeBadReady, "identity longer than 255 bytes")
	}
	return props, nil
}

func (s *server) readLoop(p *peer, br *bufio.Reader) {
	fr := frameReader{r: br, maxMessage: s.opts.MaxMessageSize}
	for {
		frames, isCmd, err := fr.readMessage()
		if err != nil {
			select {
			case <-p.done:
				return
			default:
			}
			switch {
			case errors.Is(err, errTooBig):
				s.countDrop("too_big", 1)
				s.warn("too_big", "peer sent a message over the maximum size; connection closed", "remote", p.remote, "err", err, "max", s.opts.MaxMessageSize)
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
			case errors.Is(err, io.ErrUnexpectedEOF):
				s.log.Debug("peer closed mid-frame", "remote", p.remote)
			default:
				s.countDrop("protocol_error", 1)
				s.warn("protocol_error", "peer broke the ZeroMQ protocol; connection closed", "remote", p.remote, "err", err)
			}
			return
		}
		p.lastRecv.Store(time.Now().UnixNano())
		n := 0
		for _, f := range frames {
			n += len(f)
		}
		s.bytesIn.Add(uint64(n))
		if isCmd {
			if !s.handleCommand(p, frames[0]) {
				return
			}
			continue
		}
		s.msgsIn.Add(1)
		if !s.onMsg(p, frames) {
			return
		}
	}
}

// handleCommand answers PING, applies SUBSCRIBE/CANCEL; false ends the connection.
func (s *server) handleCommand(p *peer, body []byte) bool {
	name, data, err := parseCommand(body)
	if err != nil {
		s.warn("protocol_error", "malformed ZeroMQ command; connection closed", "remote", p.remote)
		return false
	}
	switch name {
	case "PING":
		if len(data) < 2 {
			return false
		}
		ctxData := data[2:]
		if len(ctxData) > 16 {
			ctxData = ctxData[:16]
		}
		if why := p.enqueue(item{frames: [][]byte{command("PONG", ctxData)}, command: true}); why != queued {
			s.countDrop(why, 1)
		}
	case "PONG":
	case "SUBSCRIBE":
		if s.kind == kindPub {
			return s.subscribeOrClose(p, string(data), true)
		}
	case "CANCEL":
		if s.kind == kindPub {
			return s.subscribeOrClose(p, string(data), false)
		}
	case "ERROR":
		s.logLimited(slog.LevelInfo, "peer_error", "peer sent ERROR and is closing", "remote", p.remote, "reason", string(data))
		return false
	default:
		s.log.Debug("ignoring unknown ZeroMQ command", "remote", p.remote, "command", name)
	}
	return true
}

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

// writeLoop sends what is queued, batching everything available into one flush,
// each flush under a write deadline; and PINGs when heartbeats are on.
func (s *server) writeLoop(p *peer) {
	var tick <-chan time.Time
	if s.opts.HeartbeatInterval > 0 {
		t := time.NewTicker(s.opts.HeartbeatInterval)
		defer t.Stop()
		tick = t.C
		p.lastRecv.Store(time.Now().UnixNano())
	}
	for {
		var batch []item
		select {
		case <-p.done:
			return
		case <-p.notify:
			batch = p.take()
		case <-tick:
			if time.Since(time.Unix(0, p.lastRecv.Load())) > s.opts.HeartbeatTimeout {
				s.countDrop("heartbeat_timeout", 1)
				s.logLimited(slog.LevelInfo, "heartbeat_timeout", "peer silent past the heartbeat timeout; connection closed", "remote", p.remote)
				p.shutdown()
				return
			}
			// The TTL field counts tenths of a second in 16 bits.
			ttl := binary.BigEndian.AppendUint16(nil, uint16(min(s.opts.HeartbeatTimeout/(100*time.Millisecond), 0xffff)))
			batch = []item{{frames: [][]byte{command("PING", ttl)}, command: true}}
		}
		if len(batch) == 0 {
			continue
		}
		_ = p.conn.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
		n, err := writeBatch(p.conn, batch)
		p.written(batch)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.countDrop("write_timeout", 1)
				s.warn("write_timeout", "peer stopped reading; disconnected so it cannot hold up others", "remote", p.remote, "write_timeout", s.opts.WriteTimeout)
			}
			p.shutdown()
			return
		}
		s.bytesOut.Add(n)
		s.msgsOut.Add(uint64(len(batch)))
	}
}

// copyLimit is the largest frame copied into a batch's scratch buffer; larger ones
// go out from where they are (a PUB message's frames are shared by every peer).
const copyLimit = 512

// scratchPool holds batch buffers, so an idle peer holds no write buffer at all.
var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

// writeBatch writes a batch of messages with one writev: frame headers and small
// frames are copied into a pooled scratch buffer, large frames are referenced.
func writeBatch(c net.Conn, batch []item) (uint64, error) {
	sp := scratchPool.Get().(*[]byte)
	buf := (*sp)[:0]
	bufs := make(net.Buffers, 0, 8)
	start := 0
	var n uint64
	for _, it := range batch {
		for i, f := range it.frames {
			var flags byte
			if it.command {
				flags = flagCommand
			} else if i < len(it.frames)-1 {
				flags = flagMore
			}
			buf = appendFrameHeader(buf, flags, len(f))
			if len(f) <= copyLimit {
				buf = append(buf, f...)
			} else {
				// Earlier segments keep pointing into buf's old array if append
				// reallocates it; that array stays valid while they do.
				bufs = append(bufs, buf[start:], f)
				start = len(buf)
			}
			n += uint64(len(f))
		}
	}
	if start < len(buf) {
		bufs = append(bufs, buf[start:])
	}
	_, err := bufs.WriteTo(c)
	if cap(buf) <= 64<<10 { // do not let one huge batch pin a huge buffer
		*sp = buf[:0]
		scratchPool.Put(sp)
	}
	return n, err
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

// Message is one message a Router received.
type Message struct {
	Identity []byte
	Frames   [][]byte
	Remote   string
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
		select {
		case r.in <- Message{Identity: p.identity, Frames: frames, Remote: p.remote}:
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
