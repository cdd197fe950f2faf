package edge

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/salt-broker/salt-broker/tunnel"
)

// outageLogEvery spaces the "still cannot reach the core" lines of one outage: often
// enough that an operator tailing the log sees it is still going on and why, seldom
// enough that a week-long outage is a few thousand lines.
const outageLogEvery = 30 * time.Second

// remindLoop's ticker: within a second of the reminder being due, and never a
// spin however short --outage-log-every is set in tests.
const (
	remindTickMax = time.Second
	remindTickMin = 10 * time.Millisecond
)

// outage tracks the edge's link to its core as an operator sees it: since when no
// connection is up and why the last attempt failed. The reasons exist for every
// failed attempt (many a second while down); the log gets the first of an outage at
// WARN, one reminder every `every` with the latest reason, and one INFO line when
// the link is back, so an edge that cannot reach its core never goes silent.
type outage struct {
	log   *slog.Logger
	mode  tunnel.Mode
	core  string
	every time.Duration // reminder period; tests shorten it
	now   func() time.Time

	mu       sync.Mutex
	since    time.Time // when the link went down (or the edge started); zero while up
	lastErr  error     // the last failed attempt's error during this outage
	failures int       // failed attempts during this outage
	reported time.Time // when the last WARN of this outage was written; zero: none yet
}

func newOutage(log *slog.Logger, core string, mode tunnel.Mode) *outage {
	if mode == "" {
		mode = tunnel.ModeAuto // what the dialer does with no mode
	}
	return &outage{log: log, core: core, mode: mode, every: outageLogEvery, now: time.Now, since: time.Now()}
}

// down marks the link down from at, unless it is down already (then the outage
// goes on from its first start).
func (o *outage) down(at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.since.IsZero() {
		o.since, o.lastErr, o.failures, o.reported = at, nil, 0, time.Time{}
	}
}

// failed records a failed attempt to reach the core. The first of an outage is
// logged at once at WARN with what it means; later ones only update the reason
// the reminders give.
func (o *outage) failed(err error) {
	o.mu.Lock()
	now := o.now()
	if o.since.IsZero() {
		o.since = now
	}
	o.lastErr = err
	o.failures++
	first := o.reported.IsZero()
	if first {
		o.reported = now
	}
	since := o.since
	o.mu.Unlock()
	if first {
		o.log.Warn("cannot reach the core", "core", o.core, "transport", o.mode, "why", explainDial(err, o.mode),
			"err", oneLine(err), "down_for", roundDuration(now.Sub(since)))
	}
}

// remind writes the periodic line while an outage that was reported goes on.
func (o *outage) remind() {
	o.mu.Lock()
	now := o.now()
	due := !o.since.IsZero() && !o.reported.IsZero() && o.lastErr != nil && now.Sub(o.reported) >= o.every
	if due {
		o.reported = now
	}
	since, err, n := o.since, o.lastErr, o.failures
	o.mu.Unlock()
	if due {
		d := roundDuration(now.Sub(since))
		o.log.Warn(fmt.Sprintf("still cannot reach the core for %s: %s", d, oneLine(err)), "core", o.core, "down_for", d,
			"why", explainDial(err, o.mode), "attempts", n)
	}
}

// remindLoop writes the reminders until ctx ends; the connect loop owns it.
func (o *outage) remindLoop(ctx context.Context) {
	// The reminder is due `every` after the last line, not on a fixed grid: look
	// often enough that it comes within a second of that.
	tick := max(min(o.every/4, remindTickMax), remindTickMin)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			o.remind()
		}
	}
}

// up marks the link up. An outage that was reported gets its closing line.
func (o *outage) up() {
	o.mu.Lock()
	now := o.now()
	since, reported, err, n := o.since, o.reported, o.lastErr, o.failures
	o.since, o.lastErr, o.failures, o.reported = time.Time{}, nil, 0, time.Time{}
	o.mu.Unlock()
	if !since.IsZero() && !reported.IsZero() {
		o.log.Info("reached the core again", "core", o.core, "outage", roundDuration(now.Sub(since)),
			"failed_attempts", n, "last_error", oneLine(err))
	}
}

// state is what /status shows: since when the link is down and the last error,
// both zero while it is up.
func (o *outage) state() (since time.Time, lastErr string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.lastErr != nil {
		lastErr = oneLine(o.lastErr)
	}
	return o.since, lastErr
}

// oneLine is err's text on one line: auto mode joins the errors of both
// transports with a newline, which a log line or a status field should not carry.
func oneLine(err error) string {
	if err == nil {
		return ""
	}
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// roundDuration keeps log lines readable: "2m30s", not "2m30.004182s".
func roundDuration(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

// explainDial says in an operator's words why an attempt to reach the core
// failed and what to check. err may join the errors of both transports (auto
// mode); the most specific cause wins. With mode tcp, UDP is never blamed.
func explainDial(err error, mode tunnel.Mode) string {
	var (
		addrErr  *net.AddrError
		dnsErr   *net.DNSError
		hostErr  x509.HostnameError
		caErr    x509.UnknownAuthorityError
		invalid  x509.CertificateInvalidError
		idleErr  *quic.IdleTimeoutError
		hsErr    *quic.HandshakeTimeoutError
		netErr   net.Error
		msg      = err.Error()
		quicGone = errors.As(err, &idleErr) || errors.As(err, &hsErr) ||
			(strings.Contains(msg, "quic dial") && strings.Contains(msg, "deadline exceeded"))
	)
	switch {
	case errors.As(err, &addrErr) && strings.Contains(addrErr.Err, "missing port"):
		return "the core's address has no port: give --core as host:port (the port of the core's --listen, 443 by default)"
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("the core's name %q does not resolve: check --core and this host's DNS (/etc/resolv.conf, /etc/hosts)", dnsErr.Name)
	case errors.As(err, &hostErr) || strings.Contains(msg, "doesn't contain any IP SANs") || strings.Contains(msg, "certificate is valid for"):
		return "the core's certificate does not cover the address dialed: dial a name or IP it was issued for (`broker certs show` on the core's certificate), or re-issue it with that host"
	case errors.As(err, &caErr) || strings.Contains(msg, "certificate signed by unknown authority"):
		return "the core's certificate is not signed by the CA this edge trusts (--ca): both sides must use certificates of one CA"
	case errors.As(err, &invalid) || strings.Contains(msg, "certificate has expired") || strings.Contains(msg, "not yet valid"):
		return "the core's certificate is not valid now (expired, not yet valid, or not for a core): renew it, and check both clocks"
	case strings.Contains(msg, "remote error: tls") || strings.Contains(msg, "a core that rejects this edge's certificate"):
		return "the core refused this edge's certificate: it must be an edge certificate of the core's CA, allowed by the core's --allow-edge, and not expired"
	case strings.Contains(msg, "core rejected this edge"):
		return "the core refused this edge at its hello: the error says why"
	case errors.Is(err, syscall.ECONNREFUSED) && mode == tunnel.ModeAuto && quicGone:
		return "nothing listens on the core's TCP port and QUIC got no answer over UDP: check that broker core runs there and that --core's port is its --listen port"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused: nothing listens on the core's TCP port: check that broker core runs there and that --core's port is its --listen port"
	case errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH):
		return "no route to the core's host: check the address and this host's network"
	case mode == tunnel.ModeQUIC && quicGone:
		return "no answer over QUIC (UDP): the core is down, or UDP to its port is blocked; --transport auto falls back to TCP"
	case mode == tunnel.ModeAuto && quicGone:
		return "no answer from the core over UDP or TCP: the core's host is down or a firewall drops the packets"
	case errors.As(err, &netErr) && netErr.Timeout(), errors.Is(err, context.DeadlineExceeded):
		if mode == tunnel.ModeTCP {
			return "no answer on the core's TCP port: the core's host is down, or a firewall drops the packets"
		}
		return "no answer from the core: its host is down, or a firewall drops the packets"
	case strings.Contains(msg, "control stream") || strings.Contains(msg, "hello"):
		return "the connection came up but the hello with the core failed: see the error; the core's log says why it closed it"
	default:
		return "see the error"
	}
}
