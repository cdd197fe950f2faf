// Package tunnel carries streams between an edge and its core over one connection:
// QUIC (quic-go) on UDP, or TLS 1.3 + smux (protocol v2) on TCP on the same port
// where UDP is blocked. Both are mutual TLS with ALPN salt-broker/1, and both hide
// behind one Session interface, so the edge and the core never know which one they
// run on. tunnel knows streams and bytes, never Salt.
package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
)

// ALPN is the protocol both transports negotiate; a peer without it is refused.
const ALPN = "salt-broker/1"

// Stream is one reliable, ordered byte stream of a Session.
type Stream interface {
	io.Reader
	io.Writer
	// CloseWrite ends our direction after what was written; reading goes on.
	CloseWrite() error
	// Close ends our direction after what was written and stops reading.
	Close() error
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// Session is one connection between an edge and a core.
type Session interface {
	OpenStream(ctx context.Context) (Stream, error)
	AcceptStream(ctx context.Context) (Stream, error)
	CloseWithError(reason string) error
	// Context is done when the session ends; context.Cause says why.
	Context() context.Context
	Transport() string // "quic" or "tcp"
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	// PeerName is the common name of the peer's verified certificate.
	PeerName() string
	Stats() Stats
}

// Stats are best-effort transport statistics: QUIC's ConnectionStats, and on TCP
// the kernel's TCP_INFO (Linux; zeros elsewhere). The RTTs, the congestion window
// and the packet counts are what an edge sizes its pool of connections by.
type Stats struct {
	SmoothedRTT, MinRTT time.Duration
	// CongestionWindow is the sender's window in bytes: what this connection may
	// have in flight. A TCP segment count times the MSS on TCP.
	CongestionWindow         uint64
	BytesSent, BytesReceived uint64
	// PacketsSent includes those later declared lost; PacketsLost is QUIC's count
	// of packets declared lost (it may go down when a late one arrives), on TCP
	// the retransmitted segments. Their deltas over an interval give its loss rate.
	PacketsSent, PacketsLost uint64
	// PacketsReceived moves whenever anything at all arrives from the peer, data
	// or acknowledgement: the measure of a connection's liveness (DESIGN §4), which
	// a pong queued behind data is not. QUIC counts packets (acknowledgements of
	// what we send travel in them); TCP counts reads from the socket that returned
	// bytes, beneath TLS, which include smux's window updates and the peer's
	// pongs during an upload. (TCP_INFO's last-ACK time is not used: a hop that
	// terminates TCP — an HTTP CONNECT proxy, a forwarder — acknowledges on the
	// core's behalf, so ACKs would hide a path that is dead beyond it.)
	PacketsReceived uint64
}

// Config tunes both transports. Defaults suit long fat links (DESIGN §4).
type Config struct {
	TLS                *tls.Config   // from certs; cloned, ALPN and TLS 1.3 enforced
	KeepAlivePeriod    time.Duration // default 10s, well under NAT timeouts
	IdleTimeout        time.Duration // default 30s
	HandshakeTimeout   time.Duration // default 5s
	StreamWindow       uint64        // default 16 MiB
	ConnWindow         uint64        // default 64 MiB (300 ms × 100 Mbit/s ≈ 4 MB, with room)
	MaxIncomingStreams int64         // default 10000: one stream per request in flight
	Logger             *slog.Logger

	// TLSFunc, when set, replaces TLS and is asked for each new connection an edge
	// dials, so certificates reloaded at SIGHUP apply to the next handshake
	// (certs.Store.ClientTLS). A listener asks it once: the core's reloadable
	// configuration reads the current material in its own hooks.
	TLSFunc func() *tls.Config
}

func (c Config) withDefaults() Config {
	if c.KeepAlivePeriod == 0 {
		c.KeepAlivePeriod = 10 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 30 * time.Second
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.StreamWindow == 0 {
		c.StreamWindow = 16 << 20
	}
	if c.ConnWindow == 0 {
		c.ConnWindow = 64 << 20
	}
	if c.MaxIncomingStreams == 0 {
		c.MaxIncomingStreams = 10_000
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) tlsConfig() (*tls.Config, error) {
	base := c.TLS
	if c.TLSFunc != nil {
		base = c.TLSFunc()
	}
	if base == nil {
		return nil, errors.New("tunnel: no TLS configuration (certificates are required)")
	}
	t := base.Clone()
	t.MinVersion = tls.VersionTLS13
	t.NextProtos = []string{ALPN}
	return t, nil
}

// Mode picks the transport an edge dials.
type Mode string

// Modes.
const (
	ModeAuto Mode = "auto" // QUIC, falling back to TCP when QUIC does not come up in time
	ModeQUIC Mode = "quic"
	ModeTCP  Mode = "tcp"
)

// ParseMode reads --transport.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeQUIC, ModeTCP:
		return m, nil
	case "":
		return ModeAuto, nil
	}
	return "", fmt.Errorf("transport %q: want auto, quic or tcp", s)
}

func peerName(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	return cs.PeerCertificates[0].Subject.CommonName
}
