package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
)

// DefaultFallbackDelay is how long auto mode gives QUIC before it also tries TCP:
// a QUIC handshake over a sane WAN ends well within it, a blackholed UDP path never.
const DefaultFallbackDelay = 3 * time.Second

// DialOptions say how an edge reaches its core.
type DialOptions struct {
	Mode Mode
	// FallbackDelay: in auto mode, TCP is started if QUIC has not completed by then
	// (default DefaultFallbackDelay, 3s); the first to complete wins and the other is closed.
	FallbackDelay time.Duration
	// Proxy is used by the TCP transport only; nil means a direct connection.
	Proxy ProxyFunc
	// TCPCongestion, when set, is the kernel congestion control (TCP_CONGESTION,
	// e.g. "bbr") asked for on every TCP socket. Where the kernel refuses it the
	// connection goes on with the system default and one line says what to do.
	TCPCongestion string
}

// Dial opens one session to addr (host:port) on a socket of its own, for one-off
// users (tests, tools). An edge keeps a Dialer instead, so all its QUIC connections
// share one UDP socket.
func Dial(ctx context.Context, addr string, cfg Config, opt DialOptions) (Session, error) {
	cfg = cfg.withDefaults()
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	if tlsCfg, err = forServer(tlsCfg, addr); err != nil {
		return nil, err
	}
	tcp := tcpDialer{cfg: cfg, tls: tlsCfg, proxy: opt.Proxy, cc: ccControl(opt.TCPCongestion, cfg.Logger, &sync.Once{})}
	single := func(ctx context.Context) (Session, error) {
		c, err := quic.DialAddr(ctx, addr, tlsCfg, cfg.quicConfig())
		if err != nil {
			return nil, fmt.Errorf("quic dial %s: %w", addr, err)
		}
		return quicSession{c: c}, nil
	}
	return dialMode(ctx, opt.Mode, opt.FallbackDelay, single, func(ctx context.Context) (Session, error) { return tcp.dial(ctx, addr) })
}

// forServer names the server to verify when the TLS configuration does not.
func forServer(tlsCfg *tls.Config, addr string) (*tls.Config, error) {
	if tlsCfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("core address %q: %w", addr, err)
		}
		tlsCfg.ServerName = host
	}
	return tlsCfg, nil
}

// Dialer opens any number of sessions to cores for one edge. Its QUIC connections
// all come from ONE quic.Transport on ONE UDP socket: one source port, so one NAT
// mapping and one firewall rule, however many connections the edge runs (each gets
// its own congestion window and its own mutual TLS handshake; QUIC tells them apart
// by connection ID). Its TCP connections are independent TLS + smux connections.
type Dialer struct {
	cfg  Config
	opt  DialOptions
	log  *slog.Logger
	cc   func(network, address string, c syscall.RawConn) error
	once sync.Once // the TCP_CONGESTION warning, once per Dialer

	mu     sync.Mutex
	udp    *net.UDPConn
	tr     *quic.Transport
	closed bool
}

// NewDialer checks the configuration; the UDP socket is opened at the first QUIC dial.
func NewDialer(cfg Config, opt DialOptions) (*Dialer, error) {
	cfg = cfg.withDefaults()
	if _, err := cfg.tlsConfig(); err != nil {
		return nil, err
	}
	d := &Dialer{cfg: cfg, opt: opt, log: cfg.Logger}
	d.cc = ccControl(opt.TCPCongestion, cfg.Logger, &d.once)
	return d, nil
}

// Dial opens a session to addr in the Dialer's mode (auto: QUIC, raced by TCP).
func (d *Dialer) Dial(ctx context.Context, addr string) (Session, error) {
	return d.DialMode(ctx, addr, d.opt.Mode)
}

// DialMode opens a session with another mode than the Dialer's: the edge's QUIC
// probe while on the fallback, and the extra connections of a pool, which take the
// transport the pool already runs on.
func (d *Dialer) DialMode(ctx context.Context, addr string, mode Mode) (Session, error) {
	tlsCfg, err := d.cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	if tlsCfg, err = forServer(tlsCfg, addr); err != nil {
		return nil, err
	}
	tcp := tcpDialer{cfg: d.cfg, tls: tlsCfg, proxy: d.opt.Proxy, cc: d.cc}
	return dialMode(ctx, mode, d.opt.FallbackDelay,
		func(ctx context.Context) (Session, error) { return d.dialQUIC(ctx, addr, tlsCfg) },
		func(ctx context.Context) (Session, error) { return tcp.dial(ctx, addr) })
}

// LocalUDPAddr is the address of the shared UDP socket, nil before the first QUIC dial.
func (d *Dialer) LocalUDPAddr() net.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.udp == nil {
		return nil
	}
	return d.udp.LocalAddr()
}

// transport returns the shared QUIC transport, opening its socket the first time.
func (d *Dialer) transport() (*quic.Transport, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("dialer closed")
	}
	if d.tr == nil {
		// Like quic.DialAddr: a wildcard address, dual stack where the system has it.
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4zero})
		if err != nil {
			return nil, fmt.Errorf("open the UDP socket for QUIC: %w", err)
		}
		d.udp, d.tr = udp, &quic.Transport{Conn: udp}
	}
	return d.tr, nil
}

func (d *Dialer) dialQUIC(ctx context.Context, addr string, tlsCfg *tls.Config) (Session, error) {
	ua, err := net.ResolveUDPAddr("udp", addr) // each time: the core's name may move
	if err != nil {
		return nil, fmt.Errorf("quic dial %s: %w", addr, err)
	}
	tr, err := d.transport()
	if err != nil {
		return nil, err
	}
	c, err := tr.Dial(ctx, ua, tlsCfg, d.cfg.quicConfig())
	if errors.Is(err, quic.ErrTransportClosed) {
		// The socket failed under quic-go (a read error it cannot go on from), which
		// ended every connection on it: start over on a new socket, so the next
		// attempt can work. The port changes, which is all that can be done.
		d.reset(tr)
	}
	if err != nil {
		return nil, fmt.Errorf("quic dial %s: %w", addr, err)
	}
	return quicSession{c: c}, nil
}

// reset drops tr if it is still the Dialer's transport.
func (d *Dialer) reset(tr *quic.Transport) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tr != tr {
		return
	}
	d.log.Warn("the UDP socket of the QUIC connections failed; opening a new one (a new source port)", "local", d.udp.LocalAddr())
	_ = tr.Close()
	_ = d.udp.Close()
	d.tr, d.udp = nil, nil
}

// Close ends every QUIC connection of the Dialer (close sessions first to tell
// the core why) and releases its socket. TCP sessions are closed by their owners.
func (d *Dialer) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	if d.tr == nil {
		return nil
	}
	err := d.tr.Close()
	if cerr := d.udp.Close(); err == nil {
		err = cerr
	}
	d.tr, d.udp = nil, nil
	return err
}

type dialFunc func(ctx context.Context) (Session, error)

func dialMode(ctx context.Context, mode Mode, delay time.Duration, dialQ, dialT dialFunc) (Session, error) {
	switch mode {
	case ModeQUIC:
		return dialQ(ctx)
	case ModeTCP:
		return dialT(ctx)
	}
	if delay == 0 {
		delay = DefaultFallbackDelay
	}
	return dialAuto(ctx, delay, dialQ, dialT)
}

// dialAuto races QUIC against a TCP attempt started after delay (or at once when QUIC
// fails first), happy-eyeballs style. It owns both attempts and returns only once
// both have ended: the loser is cancelled, and closed should it complete anyway.
func dialAuto(ctx context.Context, delay time.Duration, dialQ, dialT dialFunc) (Session, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		s   Session
		err error
	}
	results := make(chan result, 2) // one per attempt: no send ever blocks
	var attempts sync.WaitGroup
	attempts.Go(func() {
		s, err := dialQ(ctx)
		results <- result{s, err}
	})
	startTCP := func() {
		attempts.Go(func() {
			s, err := dialT(ctx)
			results <- result{s, err}
		})
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	pending, tcpStarted := 1, false
	var errs []error
	for pending > 0 {
		select {
		case <-timer.C:
			if !tcpStarted {
				tcpStarted = true
				pending++
				startTCP()
			}
		case r := <-results:
			pending--
			if r.err == nil {
				// Cancel the loser and wait for it (both dials end promptly once
				// their context does); close it should it have completed first.
				cancel()
				attempts.Wait()
				for range pending {
					if late := <-results; late.err == nil {
						_ = late.s.CloseWithError("another transport won")
					}
				}
				return r.s, nil
			}
			errs = append(errs, r.err)
			if !tcpStarted {
				tcpStarted = true
				pending++
				startTCP()
			}
		}
	}
	return nil, errors.Join(errs...)
}
