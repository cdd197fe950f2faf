// Package wan is the WAN lab: a UDP impairment proxy (and a Link adding TCP) that
// sits between an edge and its core on loopback, and a packet-level Lab of two
// network namespaces joined by TUN devices. Both apply the same Profile to every
// packet, both ways; this kernel has no netem.
package wan

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Profile is what the link does to each packet, in each direction.
type Profile struct {
	Delay  time.Duration // one way
	Jitter time.Duration // uniform in [0, Jitter), added to Delay
	Loss   float64       // probability a packet is dropped
	// Bursty loss (Gilbert-Elliott): each packet, a good channel turns bad with
	// probability BurstP and a bad one good with BurstR; a bad one drops all. Mean
	// burst length is 1/BurstR packets; long-run loss BurstP/(BurstP+BurstR).
	BurstP, BurstR float64
	// Duplicate is the probability a packet is delivered twice.
	Duplicate float64
	// Reorder is the probability a packet is held back ReorderDelay (0: 10 ms) more
	// than its delay, so the packets sent just after it overtake it.
	Reorder      float64
	ReorderDelay time.Duration
	// RateBps caps each direction at this many bits per second (0: no cap). Packets
	// queue at the bottleneck and leave one after another, each taking size*8/RateBps,
	// before Delay; QueueBytes bounds that queue (0: 100 ms at RateBps, at least
	// 32 KiB) and a packet that does not fit is dropped (Counters.QueueDropped).
	RateBps    int64
	QueueBytes int
}

// UDPProxy forwards datagrams between clients and one target, impaired.
type UDPProxy struct {
	conn   *net.UDPConn
	target *net.UDPAddr

	imp    *impairment
	mu     sync.Mutex
	flows  map[string]*flow
	closed chan struct{}
	wg     sync.WaitGroup

	Counters
}

// Directions: each has its own bursts and bottleneck, shared by every client.
const (
	dirUp   = 0 // client to target
	dirDown = 1
)

type flow struct {
	up *net.UDPConn // our socket towards the target for this client
	// Writers built once, not per datagram.
	toTarget, toClient func([]byte)
}

// NewUDPProxy listens on listen (e.g. 127.0.0.1:0) and forwards to target.
func NewUDPProxy(listen, target string, p Profile) (*UDPProxy, error) {
	la, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		return nil, err
	}
	ta, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", la)
	if err != nil {
		return nil, err
	}
	px := &UDPProxy{conn: c, target: ta, flows: map[string]*flow{}, closed: make(chan struct{})}
	px.imp = newImpairment(p, &px.Counters)
	px.wg.Go(func() { px.imp.run(px.closed) })
	px.wg.Go(px.fromClients)
	return px, nil
}

// Addr is where clients send.
func (px *UDPProxy) Addr() string { return px.conn.LocalAddr().String() }

// SetProfile changes the impairment from now on.
func (px *UDPProxy) SetProfile(p Profile) { px.imp.setProfile(p) }

// SetDown starts (true) or ends (false) a blackout: every datagram is dropped.
func (px *UDPProxy) SetDown(down bool) { px.imp.down.Store(down) }

// Close stops forwarding and releases every socket.
func (px *UDPProxy) Close() error {
	select {
	case <-px.closed:
		return nil
	default:
	}
	close(px.closed)
	err := px.conn.Close()
	px.mu.Lock()
	for _, f := range px.flows {
		_ = f.up.Close()
	}
	px.mu.Unlock()
	px.wg.Wait()
	return err
}

func (px *UDPProxy) fromClients() {
	buf := make([]byte, 65535)
	for {
		n, client, err := px.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		f, err := px.flowFor(client)
		if err != nil {
			continue
		}
		px.imp.send(dirUp, buf[:n], true, f.toTarget)
	}
}

func (px *UDPProxy) flowFor(client *net.UDPAddr) (*flow, error) {
	px.mu.Lock()
	defer px.mu.Unlock()
	if f := px.flows[client.String()]; f != nil {
		return f, nil
	}
	select {
	case <-px.closed:
		return nil, errors.New("closed")
	default:
	}
	up, err := net.DialUDP("udp", nil, px.target)
	if err != nil {
		return nil, err
	}
	f := &flow{up: up}
	f.toTarget = func(b []byte) { _, _ = up.Write(b) }
	f.toClient = func(b []byte) { _, _ = px.conn.WriteToUDP(b, client) }
	px.flows[client.String()] = f
	px.wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			n, err := up.Read(buf)
			if err != nil {
				select {
				case <-px.closed:
					return
				case <-time.After(10 * time.Millisecond): // e.g. ICMP refused while the target restarts
				}
				continue
			}
			px.imp.send(dirDown, buf[:n], true, f.toClient)
		}
	})
	return f, nil
}

// BlockUDP drops every datagram while on, as a network that filters UDP does; the
// TCP side of a Link keeps working.
func (px *UDPProxy) BlockUDP(on bool) { px.imp.noUDP.Store(on) }
