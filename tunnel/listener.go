package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"github.com/quic-go/quic-go"
)

// Listener accepts edges on UDP (QUIC) and TCP (TLS + smux) on the same port.
type Listener struct {
	cfg      Config
	log      *slog.Logger
	quic     *quic.Listener
	udp      net.PacketConn
	tcp      net.Listener
	sessions chan Session
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	once     sync.Once
}

// Listen binds addr on UDP and TCP. With port 0, both get the same free port.
func Listen(addr string, cfg Config) (*Listener, error) {
	cfg = cfg.withDefaults()
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	l := &Listener{cfg: cfg, log: cfg.Logger, sessions: make(chan Session, 16)}
	tlsCfg = l.loggingTLS(tlsCfg)
	var lastErr error
	for range 10 { // port 0: the free UDP port may be taken on TCP; try another
		udp, tcp, err := bindPair(addr)
		if err != nil {
			lastErr = err
			continue
		}
		ql, err := quic.Listen(udp, tlsCfg, cfg.quicConfig())
		if err != nil {
			_ = udp.Close()
			_ = tcp.Close()
			return nil, fmt.Errorf("quic listen %s: %w", addr, err)
		}
		l.udp, l.tcp, l.quic = udp, tcp, ql
		l.ctx, l.cancel = context.WithCancel(context.Background())
		l.wg.Go(l.acceptQUIC)
		l.wg.Go(func() { l.acceptTCP(tlsCfg) })
		return l, nil
	}
	return nil, lastErr
}

func bindPair(addr string) (net.PacketConn, net.Listener, error) {
	udp, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen udp %s: %w", addr, err)
	}
	host, _, _ := net.SplitHostPort(addr)
	port := udp.LocalAddr().(*net.UDPAddr).Port
	tcp, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		_ = udp.Close()
		return nil, nil, fmt.Errorf("listen tcp %s (same port as udp): %w", net.JoinHostPort(host, strconv.Itoa(port)), err)
	}
	return udp, tcp, nil
}

// loggingTLS logs every refused peer with its address and what to do.
func (l *Listener) loggingTLS(base *tls.Config) *tls.Config {
	cfg := base.Clone()
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		remote := "unknown"
		if hello.Conn != nil {
			remote = hello.Conn.RemoteAddr().String()
		}
		c := base.Clone()
		verify := base.VerifyConnection
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if verify == nil {
				return nil
			}
			if err := verify(cs); err != nil {
				l.log.Warn("edge refused", "remote", remote, "reason", err)
				return err
			}
			return nil
		}
		return c, nil
	}
	return cfg
}

func (l *Listener) acceptQUIC() {
	for {
		c, err := l.quic.Accept(l.ctx)
		if err != nil {
			return
		}
		if p := c.ConnectionState().TLS.NegotiatedProtocol; p != ALPN {
			l.log.Warn("peer refused: wrong ALPN", "remote", c.RemoteAddr(), "alpn", p)
			_ = c.CloseWithError(1, "wrong ALPN")
			continue
		}
		l.deliver(quicSession{c: c})
	}
}

func (l *Listener) acceptTCP(tlsCfg *tls.Config) {
	for {
		raw, err := l.tcp.Accept()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.log.Error("tcp accept failed", "err", err)
			return
		}
		// Handshakes run beside the accept loop: one silent client never blocks others.
		l.wg.Go(func() {
			s, err := serverTCP(l.ctx, raw, tlsCfg, l.cfg)
			if err != nil {
				if l.ctx.Err() == nil {
					l.log.Warn("tcp peer refused: not a salt-broker edge with a valid certificate", "remote", raw.RemoteAddr(), "err", err)
				}
				return
			}
			l.deliver(s)
		})
	}
}

func (l *Listener) deliver(s Session) {
	select {
	case l.sessions <- s:
	case <-l.ctx.Done():
		_ = s.CloseWithError("listener closed")
	}
}

// Accept returns the next authenticated session, from either transport.
func (l *Listener) Accept(ctx context.Context) (Session, error) {
	select {
	case s := <-l.sessions:
		return s, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.ctx.Done():
		return nil, errors.New("listener closed")
	}
}

// Addr is the UDP address.
func (l *Listener) Addr() net.Addr { return l.udp.LocalAddr() }

// TCPAddr is the TCP address (same port).
func (l *Listener) TCPAddr() net.Addr { return l.tcp.Addr() }

// Close stops both listeners. QUIC sessions share the UDP socket and end with it.
func (l *Listener) Close() error {
	l.once.Do(func() {
		l.cancel()
		_ = l.quic.Close()
		_ = l.tcp.Close()
		l.wg.Wait()
		_ = l.udp.Close()
		for {
			select {
			case s := <-l.sessions:
				_ = s.CloseWithError("listener closed")
			default:
				return
			}
		}
	})
	return nil
}
