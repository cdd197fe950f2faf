package core

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/internal/setting"
	"github.com/salt-broker/salt-broker/tunnel"
)

// Every setting with a bad value is refused with its name and value; the defaults,
// zeros (which mean the default) and a negative DrainTimeout (no drain) pass.
func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name  string
		set   func(*Config)
		want  string // setting named; "" = valid
		value string
	}{
		{"defaults", func(*Config) {}, "", ""},
		{"zeros are defaults", func(c *Config) {
			c.MaxInFlight, c.Ring.Count, c.Table.TTL, c.WriteTimeout, c.BulkInFlightBytes = 0, 0, 0, 0, 0
		}, "", ""},
		{"no drain", func(c *Config) { c.DrainTimeout = -1 }, "", ""},
		{"ring as large as a message", func(c *Config) { c.MaxMessageSize, c.Ring.Bytes = 1000, 1000 }, "", ""},
		{"pub port negative", func(c *Config) { c.MasterPubPort = -1 }, "--master-pub-port", "-1"},
		{"ret port too big", func(c *Config) { c.MasterRetPort = 70000 }, "--master-ret-port", "70000"},
		{"message size negative", func(c *Config) { c.MaxMessageSize = -5 }, "--max-message-size", "-5"},
		{"message size too big", func(c *Config) { c.MaxMessageSize, c.Ring.Bytes = 2<<30, 4<<30 }, "--max-message-size", "2147483648"},
		{"message size over the reply cache", func(c *Config) { c.MaxMessageSize, c.Ring.Bytes = 768<<20, 1<<30 }, "--max-message-size", "805306368"},
		{"ring count", func(c *Config) { c.Ring.Count = -1 }, "--ring-count", "-1"},
		{"ring bytes negative", func(c *Config) { c.Ring.Bytes = -1 }, "--ring-bytes", "-1"},
		{"ring bytes below a message", func(c *Config) { c.MaxMessageSize, c.Ring.Bytes = 1001, 1000 }, "--ring-bytes", "1000"},
		{"ring age", func(c *Config) { c.Ring.Age = -time.Minute }, "--ring-age", "-1m0s"},
		{"max in flight", func(c *Config) { c.MaxInFlight = -1 }, "--max-in-flight", "-1"},
		{"dedup ttl", func(c *Config) { c.Table.TTL = -time.Second }, "--dedup-ttl", "-1s"},
		{"table entries", func(c *Config) { c.Table.Entries = -1 }, "core.Config.Table.Entries", "-1"},
		{"table reply bytes", func(c *Config) { c.Table.ReplyBytes = -1 }, "core.Config.Table.ReplyBytes", "-1"},
		{"master timeout", func(c *Config) { c.MasterTimeout = -time.Second }, "core.Config.MasterTimeout", "-1s"},
		{"write timeout", func(c *Config) { c.WriteTimeout = -time.Second }, "--write-timeout", "-1s"},
		{"bulk in flight", func(c *Config) { c.BulkInFlightBytes = -1 }, "--bulk-in-flight-bytes", "-1"},
		{"table queue bytes", func(c *Config) { c.Table.QueueBytes = -1 }, "core.Config.Table.QueueBytes", "-1"},
		{"tunnel streams", func(c *Config) { c.Tunnel.MaxIncomingStreams = -1 }, "core.Config.Tunnel.MaxIncomingStreams", "-1"},
		{"tunnel keepalive past idle", func(c *Config) { c.Tunnel.KeepAlivePeriod, c.Tunnel.IdleTimeout = 30*time.Second, 30*time.Second }, "core.Config.Tunnel.KeepAlivePeriod", "30s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{MasterHost: "x"}
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

// New refuses a bad setting with an error; --max-in-flight -1 used to panic
// (makechan: size out of range) after the listener was bound.
func TestNewRefusesBadSetting(t *testing.T) {
	pki, err := certs.NewEphemeral([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := Config{MasterHost: "127.0.0.1", Listen: "127.0.0.1:0", MaxInFlight: -1,
		Tunnel: tunnel.Config{TLS: pki.Server, Logger: log}, Logger: log}
	c, err := New(cfg)
	if err == nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = c.Run(ctx) // closes what New bound
		t.Fatal("New took --max-in-flight -1")
	}
	if !setting.IsError(err) || err.Error() != "--max-in-flight -1: must be at least 1" {
		t.Fatalf("New: %q, want the refused setting", err)
	}
}
