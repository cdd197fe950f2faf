package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/xtaci/smux"
)

func (c Config) smuxConfig() *smux.Config {
	sc := smux.DefaultConfig()
	// Version 2 gives each stream its own window: with v1 one unread stream stalls the
	// whole session (dependency-pitfalls.md, smux #18, #69).
	sc.Version = 2
	sc.KeepAliveInterval = c.KeepAlivePeriod
	sc.KeepAliveTimeout = c.IdleTimeout
	sc.MaxReceiveBuffer = int(c.ConnWindow)
	sc.MaxStreamBuffer = int(c.StreamWindow)
	return sc
}

// tcpSession adapts an smux session over TLS.
type tcpSession struct {
	sess    *smux.Session
	tls     *tls.Conn
	ctx     context.Context
	cancel  context.CancelCauseFunc
	accepts chan *smux.Stream
	once    sync.Once
}

func newTCPSession(tc *tls.Conn, sess *smux.Session, server bool) *tcpSession {
	ctx, cancel := context.WithCancelCause(context.Background())
	s := &tcpSession{sess: sess, tls: tc, ctx: ctx, cancel: cancel, accepts: make(chan *smux.Stream, 64)}
	go func() {
		<-sess.CloseChan()
		cancel(errors.New("tcp session closed"))
	}()
	if server {
		// Keep accepting: a full smux backlog stalls the whole session.
		go s.acceptLoop()
	}
	return s
}

func (s *tcpSession) acceptLoop() {
	for {
		st, err := s.sess.AcceptStream()
		if err != nil {
			// smux reports a protocol version mismatch here without closing the session.
			s.close(fmt.Errorf("tcp session: %w", err))
			return
		}
		select {
		case s.accepts <- st:
		case <-s.ctx.Done():
			_ = st.Close()
			return
		}
	}
}

func (s *tcpSession) close(cause error) {
	s.once.Do(func() {
		s.cancel(cause)
		_ = s.sess.Close()
	})
}

func (s *tcpSession) OpenStream(ctx context.Context) (Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := s.sess.OpenStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (s *tcpSession) AcceptStream(ctx context.Context) (Stream, error) {
	select {
	case st := <-s.accepts:
		return st, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.ctx.Done():
		return nil, context.Cause(s.ctx)
	}
}

func (s *tcpSession) CloseWithError(reason string) error {
	s.close(errors.New(reason))
	return nil
}

func (s *tcpSession) Context() context.Context { return s.ctx }
func (s *tcpSession) Transport() string        { return "tcp" }
func (s *tcpSession) LocalAddr() net.Addr      { return s.tls.LocalAddr() }
func (s *tcpSession) RemoteAddr() net.Addr     { return s.tls.RemoteAddr() }
func (s *tcpSession) PeerName() string         { return peerName(s.tls.ConnectionState()) }
func (s *tcpSession) Stats() Stats             { return Stats{} }

// serverTCP completes TLS and smux on an accepted TCP connection.
func serverTCP(ctx context.Context, raw net.Conn, tlsCfg *tls.Config, cfg Config) (Session, error) {
	_ = raw.SetDeadline(time.Now().Add(cfg.HandshakeTimeout))
	tc := tls.Server(raw, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		_ = tc.Close()
		return nil, fmt.Errorf("peer does not speak %s (ALPN %q)", ALPN, p)
	}
	_ = raw.SetDeadline(time.Time{})
	sess, err := smux.Server(tc, cfg.smuxConfig())
	if err != nil {
		_ = tc.Close()
		return nil, err
	}
	return newTCPSession(tc, sess, true), nil
}

// dialTCP opens TLS + smux to addr, through an HTTP CONNECT proxy when one is configured.
func dialTCP(ctx context.Context, addr string, tlsCfg *tls.Config, cfg Config, proxy ProxyFunc) (Session, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout+5*time.Second)
	defer cancel()
	raw, err := dialMaybeProxy(ctx, addr, proxy)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Now()) })
	tc := tls.Client(raw, tlsCfg)
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
	sess, err := smux.Client(tc, cfg.smuxConfig())
	if err != nil {
		_ = tc.Close()
		return nil, err
	}
	return newTCPSession(tc, sess, true), nil
}
