// Package wan is the WAN lab's in-process part: a UDP impairment proxy that sits
// between an edge and its core on loopback and applies loss, delay, jitter and
// blackouts to every datagram, both ways. (This kernel has no netem; the
// packet-level lab with namespaces and TUN devices is issue 5's remaining work.)
package wan

import (
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Profile is what the link does to each datagram, in each direction.
type Profile struct {
	Delay  time.Duration // one way
	Jitter time.Duration // uniform in [0, Jitter), added to Delay
	Loss   float64       // probability a datagram is dropped
	// Bursty loss (Gilbert-Elliott, packet lab only): each packet, a good channel turns
	// bad with probability BurstP and a bad one good with BurstR; a bad one drops all.
	// Mean burst length is 1/BurstR packets; long-run loss BurstP/(BurstP+BurstR).
	BurstP, BurstR float64
}

// UDPProxy forwards datagrams between clients and one target, impaired.
type UDPProxy struct {
	conn   *net.UDPConn
	target *net.UDPAddr

	mu      sync.Mutex
	profile Profile
	flows   map[string]*flow
	down    atomic.Bool
	blocked atomic.Bool
	closed  chan struct{}
	wg      sync.WaitGroup

	Forwarded, Dropped atomic.Uint64
}

type flow struct {
	client *net.UDPAddr
	up     *net.UDPConn // our socket towards the target for this client
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
	px := &UDPProxy{conn: c, target: ta, profile: p, flows: map[string]*flow{}, closed: make(chan struct{})}
	px.wg.Go(px.fromClients)
	return px, nil
}

// Addr is where clients send.
func (px *UDPProxy) Addr() string { return px.conn.LocalAddr().String() }

// SetProfile changes the impairment from now on.
func (px *UDPProxy) SetProfile(p Profile) {
	px.mu.Lock()
	px.profile = p
	px.mu.Unlock()
}

// SetDown starts (true) or ends (false) a blackout: every datagram is dropped.
func (px *UDPProxy) SetDown(down bool) { px.down.Store(down) }

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

// send applies the profile to one datagram and writes it after its delay.
func (px *UDPProxy) send(write func([]byte), b []byte) {
	px.mu.Lock()
	p := px.profile
	px.mu.Unlock()
	if px.down.Load() || px.blocked.Load() || (p.Loss > 0 && rand.Float64() < p.Loss) {
		px.Dropped.Add(1)
		return
	}
	px.Forwarded.Add(1)
	d := p.Delay
	if p.Jitter > 0 {
		d += time.Duration(rand.Int64N(int64(p.Jitter)))
	}
	if d <= 0 {
		write(b)
		return
	}
	pkt := append([]byte(nil), b...)
	time.AfterFunc(d, func() {
		select {
		case <-px.closed:
		default:
			write(pkt)
		}
	})
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
		px.send(func(b []byte) { _, _ = f.up.Write(b) }, buf[:n])
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
	f := &flow{client: client, up: up}
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
			px.send(func(b []byte) { _, _ = px.conn.WriteToUDP(b, f.client) }, buf[:n])
		}
	})
	return f, nil
}

// BlockUDP drops every datagram while on, as a network that filters UDP does; the
// TCP side of a Link keeps working.
func (px *UDPProxy) BlockUDP(on bool) { px.blocked.Store(on) }
