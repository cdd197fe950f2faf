package edge

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/internal/setting"
)

// Every setting with a bad value is refused with its name and value; the defaults,
// zeros (which mean the default) and the documented negative "off" values pass.
func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name  string
		set   func(*Config)
		want  string // setting named; "" = valid
		value string
	}{
		{"defaults", func(*Config) {}, "", ""},
		{"zeros are defaults", func(c *Config) {
			c.MaxPending, c.MaxPendingBytes, c.AuthMaxAge, c.MaxRetryChain, c.ZMTP.MaxPeers = 0, 0, 0, 0, 0
		}, "", ""},
		{"retry window off", func(c *Config) { c.RetryWindow = -1 }, "", ""},
		{"no drain", func(c *Config) { c.DrainTimeout = -1 }, "", ""},
		{"pub port negative", func(c *Config) { c.PubPort = -1 }, "--pub-port", "-1"},
		{"pub port too big", func(c *Config) { c.PubPort = 65536 }, "--pub-port", "65536"},
		{"ret port negative", func(c *Config) { c.RetPort = -4506 }, "--ret-port", "-4506"},
		{"max pending", func(c *Config) { c.MaxPending = -1 }, "--max-pending", "-1"},
		{"max pending bytes", func(c *Config) { c.MaxPendingBytes = -1 }, "--max-pending-bytes", "-1"},
		{"auth max age", func(c *Config) { c.AuthMaxAge = -time.Second }, "--auth-max-age", "-1s"},
		{"request max age", func(c *Config) { c.RequestMaxAge = -time.Minute }, "--request-max-age", "-1m0s"},
		{"message size negative", func(c *Config) { c.MaxMessageSize = -1 }, "--max-message-size", "-1"},
		{"message size too big", func(c *Config) { c.MaxMessageSize = 4 << 30 }, "--max-message-size", "4294967296"},
		{"quic probe", func(c *Config) { c.QUICProbeInterval = -time.Second }, "--quic-probe-interval", "-1s"},
		{"retry chain", func(c *Config) { c.MaxRetryChain = -3 }, "--retry-chain", "-3"},
		{"max minions", func(c *Config) { c.ZMTP.MaxPeers = -1 }, "--max-minions", "-1"},
		{"max connections", func(c *Config) { c.MaxConnections = -1 }, "--max-connections", "-1"},
		{"write timeout", func(c *Config) { c.WriteTimeout = -time.Second }, "edge.Config.WriteTimeout", "-1s"},
		{"ping interval", func(c *Config) { c.PingInterval = -time.Second }, "edge.Config.PingInterval", "-1s"},
		{"stall within ping", func(c *Config) { c.PingInterval, c.StallTimeout = time.Second, time.Second }, "edge.Config.StallTimeout", "1s"},
		{"probe interval", func(c *Config) { c.ProbeInterval = -time.Second }, "edge.Config.ProbeInterval", "-1s"},
		{"backoff below probe", func(c *Config) { c.ProbeInterval, c.MaxBackoff = time.Second, time.Millisecond }, "edge.Config.MaxBackoff", "1ms"},
		{"replay hold", func(c *Config) { c.ReplayHold = -time.Second }, "edge.Config.ReplayHold", "-1s"},
		{"fallback delay", func(c *Config) { c.Dial.FallbackDelay = -time.Second }, "edge.Config.Dial.FallbackDelay", "-1s"},
		{"zmtp send queue", func(c *Config) { c.ZMTP.SendQueue = -1 }, "edge.Config.ZMTP.SendQueue", "-1"},
		{"zmtp send queue bytes", func(c *Config) { c.ZMTP.SendQueueBytes = -1 }, "edge.Config.ZMTP.SendQueueBytes", "-1"},
		{"zmtp message size", func(c *Config) { c.ZMTP.MaxMessageSize = -1 }, "edge.Config.ZMTP.MaxMessageSize", "-1"},
		{"zmtp heartbeat", func(c *Config) { c.ZMTP.HeartbeatInterval = -time.Second }, "edge.Config.ZMTP.HeartbeatInterval", "-1s"},
		{"tunnel idle", func(c *Config) { c.Tunnel.IdleTimeout = -time.Second }, "edge.Config.Tunnel.IdleTimeout", "-1s"},
		{"tunnel keepalive past idle", func(c *Config) { c.Tunnel.KeepAlivePeriod, c.Tunnel.IdleTimeout = time.Minute, time.Second }, "edge.Config.Tunnel.KeepAlivePeriod", "1m0s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{CoreAddr: "x"}
			tc.set(&cfg)
			cfg.Defaults()
			err := cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			var se *setting.Error
			if !errors.As(err, &se) {
				t.Fatalf("Validate: %v, want a *setting.Error naming %s", err, tc.want)
			}
			if se.Name != tc.want || se.Value != tc.value || se.Rule == "" {
				t.Fatalf("Validate: %q (name %q value %q), want name %q value %q and a rule", err, se.Name, se.Value, tc.want, tc.value)
			}
		})
	}
}

// New refuses a bad setting before it binds anything; it used to take a negative
// --max-pending silently, which then refused every request.
func TestNewRefusesBadSetting(t *testing.T) {
	cfg := Config{CoreAddr: "127.0.0.1:1", Bind: "127.0.0.1", PubPort: freePort(t), RetPort: freePort(t),
		MaxPending: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	e, err := New(cfg)
	if err == nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = e.Run(ctx) // closes what New bound
		t.Fatal("New took --max-pending -1")
	}
	if !setting.IsError(err) || err.Error() != "--max-pending -1: must be at least 1" {
		t.Fatalf("New: %q, want the refused setting", err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	n, _ := strconv.Atoi(p)
	return n
}
