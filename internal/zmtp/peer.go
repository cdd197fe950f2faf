package zmtp

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

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
	received uint64 // ROUTER: data messages read so far; only the reader (serve) touches it
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
			ttl := binary.BigEndian.AppendUint16(nil, uint16(min(s.opts.HeartbeatTimeout/pingTTLUnit, 0xffff)))
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

// pingTTLUnit is the unit of a ZMTP PING's TTL field (RFC 37: tenths of a second).
const pingTTLUnit = 100 * time.Millisecond

// scratchSize is a new scratch buffer's capacity: a batch of small messages fits;
// scratchKeepMax is the largest one given back to the pool after a big batch.
const (
	scratchSize    = 8 << 10
	scratchKeepMax = 64 << 10
)

// scratchPool holds batch buffers, so an idle peer holds no write buffer at all.
var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, scratchSize); return &b }}

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
	if cap(buf) <= scratchKeepMax { // do not let one huge batch pin a huge buffer
		*sp = buf[:0]
		scratchPool.Put(sp)
	}
	return n, err
}
