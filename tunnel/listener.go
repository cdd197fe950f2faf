package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
)

const (
	// acceptQueue bounds the sessions handshaken but not yet taken by Accept; a
	// core takes them at once, so this only absorbs a burst of reconnecting edges.
	acceptQueue = 16
	// listenAttempts: with port 0 the free UDP port may be taken on TCP, so
	// Listen tries that many ports before it gives up.
	listenAttempts = 10
	// acceptBackoffMin and acceptBackoffMax bound the TCP accept loop's backoff
	// after an error such as EMFILE: short enough to recover at once, never a spin.
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
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

	handshakesRefused atomic.Uint64

	// live holds every session handed out, so Close can tell each peer the core is
	// going away instead of leaving it to find out by idle timeout.
	liveMu sync.Mutex
	live   map[Session]struct{}
}

// maxPendingHandshakes bounds concurrent TCP handshakes (each lasts at most HandshakeTimeout).
const maxPendingHandshakes = 1024

// Listen binds addr on UDP and TCP. With port 0, both get the same free port.
func Listen(addr string, cfg Config) (*Listener, error) {
	cfg = cfg.withDefaults()
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	l := &Listener{cfg: cfg, log: cfg.Logger, sessions: make(chan Session, acceptQueue)}
	tlsCfg = l.loggingTLS(tlsCfg)
	var lastErr error
	for range listenAttempts { // port 0: the free UDP port may be taken on TCP; try another
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

const certHint = "issue the edge a certificate from this core's CA ('broker certs issue --role edge') and list it in the allow-list if one is set"

// refusedError marks a refusal decided by our TLS hooks: its text is the reason.
type refusedError struct{ error }

func (e refusedError) Unwrap() error { return e.error }

// loggingTLS logs every refused peer with its address and what to do. It works for
// both transports: quic-go hands GetConfigForClient a conn carrying the peer address.
func (l *Listener) loggingTLS(base *tls.Config) *tls.Config {
	cfg := base.Clone()
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		remote := "unknown"
		if hello.Conn != nil {
			remote = hello.Conn.RemoteAddr().String()
		}
		// Over TCP the handshake goroutine logs every failure itself ("tcp peer refused"),
		// with these reasons; only QUIC refusals, which never reach our code, are logged here.
		_, overTCP := hello.Conn.(*countingConn)
		if !slices.Contains(hello.SupportedProtos, ALPN) {
			err := fmt.Errorf("wrong ALPN: client offers %q, want %q: not a salt-broker edge, or an incompatible version", hello.SupportedProtos, ALPN)
			if !overTCP {
				l.log.Warn("edge refused", "remote", remote, "reason", err)
			}
			return nil, refusedError{err}
		}
		c := base.Clone()
		verify := base.VerifyConnection
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if verify == nil {
				return nil
			}
			if err := verify(cs); err != nil {
				if !overTCP {
					l.log.Warn("edge refused", "remote", remote, "reason", err, "hint", certHint)
				}
				return refusedError{err}
			}
			return nil
		}
		return c, nil
	}
	return cfg
}

// explainHandshake turns a TCP handshake failure into what an operator can act on.
func explainHandshake(err error, timeout time.Duration) string {
	var rh tls.RecordHeaderError
	var ne net.Error
	switch {
	case errors.As(err, &rh):
		return "not TLS: garbage or a plain-text client; only salt-broker edges belong on this port"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("no TLS handshake within %s: an idle client, a port scanner or a very slow link", timeout)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return "closed during the TLS handshake: a port probe, or an edge that did not accept this core's certificate"
	case strings.Contains(err.Error(), "remote error"):
		return "the client refused this core's certificate: the edge must trust this core's CA and dial a name the core certificate covers"
	}
	return "TLS handshake failed"
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
	sem := make(chan struct{}, maxPendingHandshakes)
	var backoff time.Duration
	for {
		raw, err := l.tcp.Accept()
		if err != nil {
			if l.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE, ENFILE, ECONNABORTED...: returning here would leave the port open
			// but never served again, silently killing the TCP fallback. Back off and retry.
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			if backoff == acceptBackoffMin || backoff == acceptBackoffMax {
				l.log.Error("tcp accept failed; retrying", "err", err, "backoff", backoff,
					"hint", "out of file descriptors? raise the open-files limit (ulimit -n / LimitNOFILE)")
			}
			select {
			case <-time.After(backoff):
			case <-l.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		select {
		case sem <- struct{}{}:
		default:
			// A flood of idle connections must not grow goroutines without bound.
			n := l.handshakesRefused.Add(1)
			if n&(n-1) == 0 {
				l.log.Warn("tcp peer refused: too many TLS handshakes in progress", "remote", raw.RemoteAddr(),
					"limit", cap(sem), "refused_total", n)
			}
			_ = raw.Close()
			continue
		}
		// Handshakes run beside the accept loop: one silent client never blocks others.
		l.wg.Go(func() {
			defer func() { <-sem }()
			s, err := serverTCP(l.ctx, raw, tlsCfg, l.cfg)
			if err != nil {
				if l.ctx.Err() != nil {
					return
				}
				var refused refusedError
				if errors.As(err, &refused) {
					hint := certHint
					if strings.HasPrefix(refused.Error(), "wrong ALPN") {
						hint = "only salt-broker edges of the same protocol version belong on this port"
					}
					l.log.Warn("tcp peer refused", "remote", raw.RemoteAddr(), "reason", refused.error, "hint", hint)
				} else {
					l.log.Warn("tcp peer refused", "remote", raw.RemoteAddr(),
						"reason", explainHandshake(err, l.cfg.HandshakeTimeout), "err", err)
				}
				return
			}
			l.deliver(s)
		})
	}
}

func (l *Listener) deliver(s Session) {
	l.liveMu.Lock()
	if l.live == nil {
		l.live = make(map[Session]struct{})
	}
	l.live[s] = struct{}{}
	l.liveMu.Unlock()
	// Runs once, when the session ends: the set only holds live sessions.
	context.AfterFunc(s.Context(), func() {
		l.liveMu.Lock()
		delete(l.live, s)
		l.liveMu.Unlock()
	})
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

// Close stops both listeners and ends every session they accepted, with a reason the
// QUIC peer sees at once (a TCP peer sees the connection close). QUIC sessions share
// the UDP socket and could not outlive it anyway; closing them first means edges
// reconnect at once instead of after IdleTimeout.
func (l *Listener) Close() error {
	l.once.Do(func() {
		l.cancel()
		l.liveMu.Lock()
		live := make([]Session, 0, len(l.live))
		for s := range l.live {
			live = append(live, s)
		}
		l.liveMu.Unlock()
		for _, s := range live {
			_ = s.CloseWithError("core listener closed")
		}
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
