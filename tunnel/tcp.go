package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/xtaci/smux"
)

const (
	// tcpConnectSlack is what a TCP dial may take beyond the TLS handshake: the TCP
	// connect itself and a proxy's CONNECT.
	tcpConnectSlack = 5 * time.Second
	// smuxMaxBuffer caps smux's windows below the 2^31-1 its VerifyConfig
	// refuses, so a larger --conn-window is clamped, not an error.
	smuxMaxBuffer = 1 << 30
)

// maxAcceptBacklog bounds the streams a TCP session holds for AcceptStream.
const maxAcceptBacklog = 4096

func (c Config) smuxConfig() *smux.Config {
	sc := smux.DefaultConfig()
	// Version 2 gives each stream its own window: with v1 one unread stream stalls the
	// whole session (dependency-pitfalls.md, smux #18, #69).
	sc.Version = 2
	sc.KeepAliveInterval = c.KeepAlivePeriod
	sc.KeepAliveTimeout = max(c.IdleTimeout, c.KeepAlivePeriod)
	sc.MaxReceiveBuffer = int(min(c.ConnWindow, smuxMaxBuffer))
	sc.MaxStreamBuffer = int(min(c.StreamWindow, c.ConnWindow, smuxMaxBuffer))
	return sc
}

var errIdle = errors.New("tcp session: nothing heard from the peer within the idle timeout (smux keep-alive)")

// tcpSession adapts an smux session over TLS.
type tcpSession struct {
	sess    *smux.Session
	tls     *tls.Conn
	raw     *countingConn
	log     *slog.Logger
	ctx     context.Context
	cancel  context.CancelCauseFunc
	accepts chan *smux.Stream
	refused atomic.Uint64
	once    sync.Once
	wg      sync.WaitGroup // the two goroutines below; both end when smux closes
}

// newTCPSession runs TLS-protected smux on tc, whose lowest layer is raw.
func newTCPSession(tc *tls.Conn, raw *countingConn, cfg Config, server bool) (*tcpSession, error) {
	ctx, cancel := context.WithCancelCause(context.Background())
	s := &tcpSession{tls: tc, raw: raw, log: cfg.Logger, ctx: ctx, cancel: cancel,
		accepts: make(chan *smux.Stream, min(max(cfg.MaxIncomingStreams, 1), maxAcceptBacklog))}
	// smux keeps a session "open" after a write error and checks keep-alives only while
	// its receive buffer has room, so a stalled peer would never be noticed: every write
	// gets a deadline, and any write error ends the session.
	conn := &deadlineConn{Conn: tc, timeout: max(cfg.IdleTimeout, cfg.KeepAlivePeriod), onErr: func(err error) {
		s.close(fmt.Errorf("tcp session: write to peer: %w", err))
	}}
	newSess := smux.Client
	if server {
		newSess = smux.Server // the two ends must pick disjoint stream IDs
	}
	sess, err := newSess(conn, cfg.smuxConfig())
	if err != nil {
		cancel(err)
		return nil, fmt.Errorf("smux: %w", err)
	}
	s.sess = sess
	// Owner of both: the session. They end when smux closes, which every close path
	// causes, and CloseWithError waits for them.
	s.wg.Go(func() {
		<-sess.CloseChan()
		s.close(errIdle)
	})
	// Keep accepting on both sides: a full smux backlog stalls the whole session.
	s.wg.Go(s.acceptLoop)
	return s, nil
}

func (s *tcpSession) acceptLoop() {
	for {
		st, err := s.sess.AcceptStream()
		if err != nil {
			switch {
			case errors.Is(err, io.EOF):
				err = errors.New("tcp session: peer closed the connection")
			case errors.Is(err, io.ErrClosedPipe), errors.Is(err, smux.ErrTimeout):
				// smux closed itself (we would have set the cause first): that is
				// its keep-alive giving up.
				err = errIdle
			case errors.Is(err, smux.ErrInvalidProtocol):
				// smux reports a version mismatch here without closing the session.
				err = errors.New("tcp session: peer speaks another smux protocol version (want 2)")
			default:
				err = fmt.Errorf("tcp session: %w", err)
			}
			s.close(err)
			return
		}
		select {
		case s.accepts <- st:
		default:
			// Blocking here would stall every stream of the session; refusing one
			// stream is visible to its opener and counted.
			n := s.refused.Add(1)
			if n&(n-1) == 0 {
				s.log.Warn("tunnel stream refused: the application is not accepting streams",
					"remote", s.RemoteAddr(), "backlog", cap(s.accepts), "refused_total", n)
			}
			_ = st.Close()
		}
	}
}

func (s *tcpSession) close(cause error) {
	s.once.Do(func() {
		s.cancel(cause)
		_ = s.sess.Close()
		for {
			select {
			case st := <-s.accepts:
				_ = st.Close()
			default:
				return
			}
		}
	})
}

// streamErr makes smux errors look like QUIC's: deadlines are os.ErrDeadlineExceeded,
// and an error caused by the session's end says why the session ended.
func (s *tcpSession) streamErr(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if errors.Is(err, smux.ErrTimeout) {
		return os.ErrDeadlineExceeded
	}
	if s.ctx.Err() != nil {
		return fmt.Errorf("%w (session ended: %v)", err, context.Cause(s.ctx))
	}
	return err
}

func (s *tcpSession) OpenStream(ctx context.Context) (Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.ctx.Err() != nil {
		return nil, fmt.Errorf("open stream: %w", context.Cause(s.ctx))
	}
	st, err := s.sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", s.streamErr(err))
	}
	return &tcpStream{Stream: st, sess: s}, nil
}

func (s *tcpSession) AcceptStream(ctx context.Context) (Stream, error) {
	select {
	case st := <-s.accepts:
		if s.ctx.Err() != nil { // a stream queued before the session ended is dead too
			_ = st.Close()
			return nil, context.Cause(s.ctx)
		}
		return &tcpStream{Stream: st, sess: s}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.ctx.Done():
		return nil, context.Cause(s.ctx)
	}
}

// CloseWithError ends the session and waits for its goroutines. smux has no goodbye
// frame, so the peer learns only that the connection closed, not the reason.
func (s *tcpSession) CloseWithError(reason string) error {
	s.close(fmt.Errorf("tcp session closed locally: %s", reason))
	s.wg.Wait()
	return nil
}

func (s *tcpSession) Context() context.Context { return s.ctx }
func (s *tcpSession) Transport() string        { return "tcp" }
func (s *tcpSession) LocalAddr() net.Addr      { return s.tls.LocalAddr() }
func (s *tcpSession) RemoteAddr() net.Addr     { return s.tls.RemoteAddr() }
func (s *tcpSession) PeerName() string         { return peerName(s.tls.ConnectionState()) }

// Stats counts bytes on the TCP socket (TLS and smux framing included) and, on Linux,
// reads RTT, congestion window, segments sent and retransmitted from the kernel
// (TCP_INFO). Behind a proxy these describe the hop to the proxy.
func (s *tcpSession) Stats() Stats {
	st := tcpInfo(s.raw.Conn)
	st.BytesSent, st.BytesReceived, st.PacketsReceived = s.raw.sent.Load(), s.raw.received.Load(), s.raw.reads.Load()
	return st
}

// tcpStream is an smux stream with QUIC-like errors.
type tcpStream struct {
	*smux.Stream
	sess *tcpSession
}

func (s *tcpStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	return n, s.sess.streamErr(err)
}

func (s *tcpStream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	return n, s.sess.streamErr(err)
}

// countingConn counts the bytes of the TCP socket beneath TLS, and the reads that
// returned some: Stats.PacketsReceived, the edge's measure of progress.
type countingConn struct {
	net.Conn
	sent, received, reads atomic.Uint64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.received.Add(uint64(n))
		c.reads.Add(1)
	}
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.sent.Add(uint64(n))
	return n, err
}

// deadlineConn sits between smux and TLS.
type deadlineConn struct {
	*tls.Conn
	timeout time.Duration
	onErr   func(error)
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Write(p)
	if err != nil {
		c.onErr(err)
	}
	return n, err
}

// serverTCP completes TLS and smux on an accepted TCP connection.
func serverTCP(ctx context.Context, raw net.Conn, tlsCfg *tls.Config, cfg Config) (Session, error) {
	cc := &countingConn{Conn: raw}
	_ = raw.SetDeadline(time.Now().Add(cfg.HandshakeTimeout))
	tc := tls.Server(cc, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		_ = tc.Close()
		return nil, fmt.Errorf("peer does not speak %s (ALPN %q)", ALPN, p)
	}
	_ = raw.SetDeadline(time.Time{})
	s, err := newTCPSession(tc, cc, cfg, true)
	if err != nil {
		_ = tc.Close()
		return nil, err
	}
	return s, nil
}

// tcpDialer opens TLS + smux connections to a core, through an HTTP CONNECT proxy
// when one is configured; cc, when set, runs on each socket before it connects.
type tcpDialer struct {
	cfg   Config
	tls   *tls.Config
	proxy ProxyFunc
	cc    func(network, address string, c syscall.RawConn) error
}

func (t tcpDialer) dial(ctx context.Context, addr string) (Session, error) {
	cfg := t.cfg
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout+tcpConnectSlack)
	defer cancel()
	raw, err := dialMaybeProxy(ctx, addr, t.proxy, t.cc)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Now()) })
	cc := &countingConn{Conn: raw}
	tc := tls.Client(cc, t.tls)
	err = tc.HandshakeContext(ctx)
	stop()
	if err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	_ = raw.SetDeadline(time.Time{})
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		_ = tc.Close()
		return nil, fmt.Errorf("%s does not speak %s (ALPN %q)", addr, ALPN, p)
	}
	s, err := newTCPSession(tc, cc, cfg, false)
	if err != nil {
		_ = tc.Close()
		return nil, err
	}
	return s, nil
}
