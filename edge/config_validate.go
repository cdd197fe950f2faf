package edge

import (
	"github.com/salt-broker/salt-broker/internal/setting"
)

// Validate checks every numeric and duration setting once, after Defaults, so a bad
// value stops the edge at start with one line (a *setting.Error) instead of a panic
// or a silent misbehaviour later. Settings cmd/broker exposes are named by their
// flag; the others by their Config field. One line per setting: add new ones here.
//
// RetryWindow and DrainTimeout take any value (< 0 turns them off), so they have no
// line; cmd/broker refuses negative flags for them itself, as 0 is how the operator
// turns them off.
func (c *Config) Validate() error {
	const f = "edge.Config."
	return setting.First([]setting.Check{
		setting.Port("--pub-port", c.PubPort),
		setting.Port("--ret-port", c.RetPort),
		setting.AtLeast("--max-pending", c.MaxPending, 1),
		setting.AtLeast("--max-pending-bytes", c.MaxPendingBytes, 1), // a request alone always fits
		setting.Positive("--auth-max-age", c.AuthMaxAge),
		setting.Positive("--request-max-age", c.RequestMaxAge),
		setting.Between("--max-message-size", c.MaxMessageSize, 1, setting.MaxMessageSize),
		setting.Positive("--quic-probe-interval", c.QUICProbeInterval),
		setting.AtLeast("--retry-chain", c.MaxRetryChain, 1),
		setting.NotNegative("--max-minions", c.ZMTP.MaxPeers, "the default"),
		setting.AtLeast("--max-connections", c.MaxConnections, 1), // the pool's anchor

		setting.Positive(f+"WriteTimeout", c.WriteTimeout),
		setting.Positive(f+"PingInterval", c.PingInterval),
		// The stall check runs at each ping: a timeout no longer than the interval
		// calls every connection stalled.
		setting.If(f+"StallTimeout", c.StallTimeout, c.StallTimeout > c.PingInterval,
			"must be more than "+f+"PingInterval ("+c.PingInterval.String()+")"),
		setting.Positive(f+"ProbeInterval", c.ProbeInterval),
		setting.If(f+"MaxBackoff", c.MaxBackoff, c.MaxBackoff >= c.ProbeInterval,
			"must be at least "+f+"ProbeInterval ("+c.ProbeInterval.String()+")"),
		setting.Positive(f+"ReplayHold", c.ReplayHold),
		setting.NotNegative(f+"Dial.FallbackDelay", c.Dial.FallbackDelay, "the default"),

		setting.NotNegative(f+"ZMTP.HandshakeTimeout", c.ZMTP.HandshakeTimeout, "the default"),
		setting.Between(f+"ZMTP.MaxMessageSize", c.ZMTP.MaxMessageSize, 1, setting.MaxMessageSize),
		setting.NotNegative(f+"ZMTP.SendQueue", c.ZMTP.SendQueue, "the default"),
		setting.NotNegative(f+"ZMTP.SendQueueBytes", c.ZMTP.SendQueueBytes, "the default"),
		setting.NotNegative(f+"ZMTP.WriteTimeout", c.ZMTP.WriteTimeout, "the default"),
		setting.NotNegative(f+"ZMTP.ReadBufferSize", c.ZMTP.ReadBufferSize, "the default"),
		setting.NotNegative(f+"ZMTP.RecvQueue", c.ZMTP.RecvQueue, "the default"),
		setting.NotNegative(f+"ZMTP.HeartbeatInterval", c.ZMTP.HeartbeatInterval, "no PINGs"),
		setting.NotNegative(f+"ZMTP.HeartbeatTimeout", c.ZMTP.HeartbeatTimeout, "the default"),
	}, setting.Tunnel(f+"Tunnel", c.Tunnel))
}
