package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// DialOptions say how an edge reaches its core.
type DialOptions struct {
	Mode Mode
	// FallbackDelay: in auto mode, TCP is started if QUIC has not completed by then
	// (default 3s); the first to complete wins and the other is closed.
	FallbackDelay time.Duration
	// Proxy is used by the TCP transport only; nil means a direct connection.
	Proxy ProxyFunc
}

// Dial opens a session to addr (host:port).
func Dial(ctx context.Context, addr string, cfg Config, opt DialOptions) (Session, error) {
	cfg = cfg.withDefaults()
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	if tlsCfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("core address %q: %w", addr, err)
		}
		tlsCfg.ServerName = host
	}
	switch opt.Mode {
	case ModeQUIC:
		return dialQUIC(ctx, addr, tlsCfg, cfg)
	case ModeTCP:
		return dialTCP(ctx, addr, tlsCfg, cfg, opt.Proxy)
	}
	delay := opt.FallbackDelay
	if delay == 0 {
		delay = 3 * time.Second
	}
	return dialAuto(ctx, addr, tlsCfg, cfg, opt.Proxy, delay)
}

func dialQUIC(ctx context.Context, addr string, tlsCfg *tls.Config, cfg Config) (Session, error) {
	c, err := quic.DialAddr(ctx, addr, tlsCfg, cfg.quicConfig())
	if err != nil {
		return nil, fmt.Errorf("quic dial %s: %w", addr, err)
	}
	return quicSession{c: c}, nil
}

// dialAuto races QUIC against a TCP attempt started after delay (or at once when QUIC
// fails first), happy-eyeballs style. It owns both attempts and returns only once
// both have ended: the loser is cancelled, and closed should it complete anyway.
func dialAuto(ctx context.Context, addr string, tlsCfg *tls.Config, cfg Config, proxy ProxyFunc, delay time.Duration) (Session, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		s   Session
		err error
	}
	results := make(chan result, 2) // one per attempt: no send ever blocks
	var attempts sync.WaitGroup
	attempts.Go(func() {
		s, err := dialQUIC(ctx, addr, tlsCfg, cfg)
		results <- result{s, err}
	})
	startTCP := func() {
		attempts.Go(func() {
			s, err := dialTCP(ctx, addr, tlsCfg, cfg, proxy)
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
