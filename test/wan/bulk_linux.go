package wan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// TallyPort makes the lab count the bytes it delivers of packets to or from TCP or
// UDP port (0: none) apart from all others, so a benchmark can tell how a shared
// bottleneck was split between one flow (a Bulk) and everything else.
func (l *Lab) TallyPort(port int) { l.tallyPort.Store(uint32(port)) }

// Tally returns the IP bytes (headers included) the lab has delivered per direction
// (0: A to B, 1: B to A): of packets to or from the tallied port, and of all others.
func (l *Lab) Tally() (port, other [2]uint64) {
	for d := range 2 {
		port[d], other[d] = l.tally[d][0].Load(), l.tally[d][1].Load()
	}
	return port, other
}

func (l *Lab) count(dir int, pkt []byte) {
	class := 1
	if p := l.tallyPort.Load(); p != 0 {
		if src, dst, ok := ports(pkt); ok && (uint32(src) == p || uint32(dst) == p) {
			class = 0
		}
	}
	l.tally[dir][class].Add(uint64(len(pkt)))
}

// ports reads the TCP or UDP ports of an IPv4 packet (the lab's addresses are IPv4).
func ports(pkt []byte) (src, dst uint16, ok bool) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 || (pkt[9] != unix.IPPROTO_TCP && pkt[9] != unix.IPPROTO_UDP) {
		return 0, 0, false
	}
	if binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
		return 0, 0, false // a later fragment carries no transport header
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < 20 || len(pkt) < ihl+4 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint16(pkt[ihl:]), binary.BigEndian.Uint16(pkt[ihl+2:]), true
}

// Bulk is one bulk TCP flow across the lab — a backup, a download — sharing the
// link with whatever else crosses it: a sender in one namespace writes as fast as TCP
// lets it to a sink in the other, both in this process, with the namespaces'
// congestion control (what NewLab set: cubic, as common hosts run).
type Bulk struct {
	Port     int
	received atomic.Int64
	ln       net.Listener
	send     net.Conn
	recv     net.Conn
	done     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
	mu       sync.Mutex
	err      error
}

// bulkIOTimeout bounds each read and write: a flow that makes no progress for this
// long (a link down far longer than any benchmark's blackout) ends with an error.
const bulkIOTimeout = 30 * time.Second

// StartBulk starts a flow from namespace from to a sink on port in namespace to
// (l.NSA or l.NSB; the sink listens on that side's address). Close stops it.
func (l *Lab) StartBulk(from, to string, port int) (*Bulk, error) {
	addr := AddrA
	switch {
	case to == l.NSB && from == l.NSA:
		addr = AddrB
	case to == l.NSA && from == l.NSB:
	default:
		return nil, fmt.Errorf("bulk flow %s to %s: not the lab's two namespaces", from, to)
	}
	b := &Bulk{Port: port, done: make(chan struct{})}
	target := net.JoinHostPort(addr, strconv.Itoa(port))
	err := inNS(to, func() (err error) {
		b.ln, err = net.Listen("tcp", target)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bulk sink on %s in %s: %w", target, to, err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		_ = b.ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
		c, err := b.ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	err = inNS(from, func() (err error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		b.send, err = d.Dial("tcp", target)
		return err
	})
	if err != nil {
		_ = b.ln.Close() // Accept gives up at once
	}
	b.recv = <-accepted
	_ = b.ln.Close() // one flow: nothing else may connect
	if err != nil || b.recv == nil {
		_ = b.Close()
		return nil, fmt.Errorf("bulk flow %s to %s: dial %v, accept failed: %v", from, target, err, b.recv == nil)
	}
	b.wg.Go(b.write)
	b.wg.Go(b.read)
	return b, nil
}

func (b *Bulk) write() {
	buf := make([]byte, 64<<10)
	for {
		select {
		case <-b.done:
			return
		default:
		}
		_ = b.send.SetWriteDeadline(time.Now().Add(bulkIOTimeout))
		if _, err := b.send.Write(buf); err != nil {
			b.fail(fmt.Errorf("bulk flow write: %w", err))
			return
		}
	}
}

func (b *Bulk) read() {
	buf := make([]byte, 64<<10)
	for {
		_ = b.recv.SetReadDeadline(time.Now().Add(bulkIOTimeout))
		n, err := b.recv.Read(buf)
		b.received.Add(int64(n))
		if err != nil {
			if err != io.EOF {
				b.fail(fmt.Errorf("bulk flow read: %w", err))
			}
			return
		}
	}
}

func (b *Bulk) fail(err error) {
	select {
	case <-b.done:
		return // closing: the error is ours
	default:
	}
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.mu.Unlock()
}

// Bytes is what the sink has received so far.
func (b *Bulk) Bytes() int64 { return b.received.Load() }

// Err is why the flow stopped before Close, if it did.
func (b *Bulk) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Close stops the flow and waits for its goroutines.
func (b *Bulk) Close() error {
	b.once.Do(func() {
		close(b.done)
		for _, c := range []io.Closer{b.send, b.recv, b.ln} {
			if c != nil {
				_ = c.Close()
			}
		}
	})
	b.wg.Wait()
	return b.Err()
}

// inNS runs fn on a thread inside network namespace ns (as named by `ip netns`):
// sockets fn creates stay in ns. The thread comes back to its own namespace after;
// one that cannot stays locked and ends with its goroutine.
func inNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", ns, err)
			return
		}
		err = fn()
		if rerr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); rerr == nil {
			runtime.UnlockOSThread()
		} else {
			err = errors.Join(err, fmt.Errorf("leave netns %s: %w", ns, rerr))
		}
		errc <- err
	}()
	return <-errc
}
