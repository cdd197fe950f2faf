package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/core"
	"github.com/salt-broker/salt-broker/edge"
	"github.com/salt-broker/salt-broker/internal/admin"
	"github.com/salt-broker/salt-broker/internal/setting"
	"github.com/salt-broker/salt-broker/tunnel"
)

func env(name string) []string {
	return []string{"BROKER_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
}

func tlsFlags() []cli.Flag {
	return []cli.Flag{
		&cli.PathFlag{Name: "ca", Usage: "CA certificate that signed both sides (from 'broker certs init'; required)", EnvVars: env("ca")},
		&cli.PathFlag{Name: "cert", Usage: "this side's certificate (from 'broker certs issue'; required)", EnvVars: env("cert")},
		&cli.PathFlag{Name: "key", Usage: "this side's private key (required)", EnvVars: env("key")},
	}
}

func commonFlags(adminDefault string) []cli.Flag {
	return []cli.Flag{
		&cli.PathFlag{Name: "config", Usage: "optional YAML file; keys are these flags' names (the old salt-broker's master, publish_port and ret_port are understood)", EnvVars: env("config")},
		&cli.StringFlag{Name: "name", Usage: "name in logs and status (default: host name)", EnvVars: env("name")},
		&cli.StringFlag{Name: "admin", Value: adminDefault, Usage: "admin HTTP address for /metrics, /healthz, /readyz, /status (\"\" disables); keep it on loopback", EnvVars: env("admin")},
		&cli.IntFlag{Name: "max-message-size", Value: 64 << 20, Usage: "largest publication, request or reply in bytes; larger ones are refused and counted", EnvVars: env("max-message-size")},
	}
}

func coreCommand() *cli.Command {
	return &cli.Command{
		Name:  "core",
		Usage: "run beside the Salt master: connect to it and serve edges",
		Description: `Connects SUB to the master's publish port and DEALER to its ret port, and listens
for edges on UDP (QUIC) and TCP (TLS + smux) on the same port.

Example:
   broker core --master 127.0.0.1 --listen :443 \
     --ca /etc/salt-broker/ca.crt --cert /etc/salt-broker/core.crt --key /etc/salt-broker/core.key`,
		Flags: append(append([]cli.Flag{
			&cli.StringFlag{Name: "master", Usage: "the Salt master's address (required)", EnvVars: env("master")},
			&cli.IntFlag{Name: "master-pub-port", Value: 4505, Usage: "the master's publish_port", EnvVars: env("master-pub-port")},
			&cli.IntFlag{Name: "master-ret-port", Value: 4506, Usage: "the master's ret_port", EnvVars: env("master-ret-port")},
			&cli.StringFlag{Name: "listen", Value: ":443", Usage: "address for edges, UDP and TCP on the same port", EnvVars: env("listen")},
			&cli.StringSliceFlag{Name: "allow-edge", Usage: "accept only edges with these certificate names (repeat or comma-separate; default: any edge the CA signed)", EnvVars: env("allow-edge")},
			&cli.IntFlag{Name: "ring-count", Value: 100_000, Usage: "replay ring: publications kept for edges that reconnect", EnvVars: env("ring-count")},
			&cli.Int64Flag{Name: "ring-bytes", Value: 256 << 20, Usage: "replay ring: payload bytes kept", EnvVars: env("ring-bytes")},
			&cli.DurationFlag{Name: "ring-age", Value: core.DefaultRingAge, Usage: "replay ring: oldest publication kept (the longest outage replayed)", EnvVars: env("ring-age")},
			&cli.IntFlag{Name: "max-in-flight", Value: 256, Usage: "requests at the master at once; a backlog drains at this pace", EnvVars: env("max-in-flight")},
			&cli.DurationFlag{Name: "drain-timeout", Value: core.DefaultDrainTimeout, Usage: "on SIGTERM, wait at most this long for the master to answer the requests in flight (and their edges to confirm), so a restart does not send them to the master twice; 0 stops at once", EnvVars: env("drain-timeout")},
			&cli.DurationFlag{Name: "dedup-ttl", Value: core.DefaultDedupTTL, Usage: "how long a request ID is remembered (must exceed the longest outage absorbed)", EnvVars: env("dedup-ttl")},
			&cli.DurationFlag{Name: "write-timeout", Value: 30 * time.Second, Usage: "a transfer to an edge that makes no progress for this long is cut (an idle deadline: a slow transfer that moves is never cut)", EnvVars: env("write-timeout")},
			&cli.Int64Flag{Name: "bulk-in-flight-bytes", Value: core.DefaultBulkInFlightBytes, Usage: "bytes of large replies (over 64 KiB) in flight at once per edge connection; the others wait their turn, first come first served, and small replies never wait", EnvVars: env("bulk-in-flight-bytes")},
		}, tlsFlags()...), commonFlags("127.0.0.1:9510")...),
		Before: chain(loadConfigFile(map[string]string{"publish_port": "master-pub-port", "ret_port": "master-ret-port"}),
			requireFlags("master", "ca", "cert", "key")),
		Action: func(c *cli.Context) error {
			// The other settings are checked by core.New; this one is the flag's
			// own: 0 stops at once, so a negative one is a mistake.
			if err := setting.First([]setting.Check{
				setting.NotNegative("--drain-timeout", c.Duration("drain-timeout"), "stop at once"),
			}); err != nil {
				return err
			}
			tlsCfg, err := certs.LoadServer(c.Path("ca"), c.Path("cert"), c.Path("key"), c.StringSlice("allow-edge"))
			if err != nil {
				return err
			}
			reg := newRegistry()
			cfg := core.Config{
				Name:           nameOr(c.String("name")),
				MasterHost:     c.String("master"),
				MasterPubPort:  c.Int("master-pub-port"),
				MasterRetPort:  c.Int("master-ret-port"),
				Listen:         c.String("listen"),
				Tunnel:         tunnel.Config{TLS: tlsCfg, Logger: slog.Default().With("component", "tunnel")},
				Ring:           core.RingLimits{Count: c.Int("ring-count"), Bytes: c.Int64("ring-bytes"), Age: c.Duration("ring-age")},
				Table:          core.TableLimits{TTL: c.Duration("dedup-ttl")},
				MaxInFlight:    c.Int("max-in-flight"),
				MaxMessageSize: c.Int("max-message-size"),
				DrainTimeout:   c.Duration("drain-timeout"),
				Registry:       reg,
			}
			if cfg.DrainTimeout == 0 {
				cfg.DrainTimeout = -1 // stop at once
			}
			cfg.WriteTimeout = c.Duration("write-timeout")
			cfg.BulkInFlightBytes = c.Int64("bulk-in-flight-bytes")
			k, err := core.New(cfg)
			if err != nil {
				return err
			}
			return runWithAdmin(c.Context, c.String("admin"), reg, k.Ready, func() any { return k.Status() }, k.Run, nil)
		},
	}
}

func edgeCommand() *cli.Command {
	return &cli.Command{
		Name:  "edge",
		Usage: "run near the minions: serve their ZeroMQ ports and tunnel to the core",
		Description: `Binds the minions' publish port (PUB) and ret port (ROUTER) at once, whether or not
the core is reachable, and keeps one connection to the core. Point minions at it by
changing only 'master:' in their config to an address of this host.

Example:
   broker edge --core core.example.net:443 \
     --ca /etc/salt-broker/ca.crt --cert /etc/salt-broker/edge.crt --key /etc/salt-broker/edge.key`,
		Flags: append(append([]cli.Flag{
			&cli.StringFlag{Name: "core", Usage: "the core's host:port (required)", EnvVars: env("core")},
			&cli.StringFlag{Name: "bind", Value: "0.0.0.0", Usage: "address minions use as 'master'", EnvVars: env("bind")},
			&cli.IntFlag{Name: "pub-port", Value: 4505, Usage: "publish port: must be the port the real master announces (its publish_port)", EnvVars: env("pub-port")},
			&cli.IntFlag{Name: "ret-port", Value: 4506, Usage: "ret port (the minions' master_port)", EnvVars: env("ret-port")},
			&cli.StringFlag{Name: "transport", Value: "auto", Usage: "auto (QUIC, falling back to TCP), quic or tcp", EnvVars: env("transport")},
			&cli.DurationFlag{Name: "quic-probe-interval", Value: 30 * time.Second, Usage: "while on the TCP fallback (--transport auto), try QUIC this often and move back when it works", EnvVars: env("quic-probe-interval")},
			&cli.StringFlag{Name: "proxy", Usage: "HTTP proxy for the TCP transport, http://[user:pass@]host:port (default: HTTPS_PROXY/NO_PROXY from the environment)", EnvVars: env("proxy")},
			&cli.PathFlag{Name: "state-dir", Usage: "directory for the publication cursor, so a restarted edge replays what it missed (\"\" keeps nothing)", EnvVars: env("state-dir")},
			&cli.IntFlag{Name: "max-pending", Value: 20_000, Usage: "requests held until their reply; past it new ones are dropped and the minion retries", EnvVars: env("max-pending")},
			&cli.Int64Flag{Name: "max-pending-bytes", Value: edge.DefaultMaxPendingBytes, Usage: "bytes of the requests held until their reply; past it new ones are dropped and the minion retries (a request alone always fits)", EnvVars: env("max-pending-bytes")},
			&cli.DurationFlag{Name: "auth-max-age", Value: edge.DefaultAuthMaxAge, Usage: "auth requests older than this are stale (the minion has retried) and dropped", EnvVars: env("auth-max-age")},
			&cli.DurationFlag{Name: "request-max-age", Value: edge.DefaultRequestMaxAge, Usage: "other requests older than this are dropped unsent", EnvVars: env("request-max-age")},
			&cli.DurationFlag{Name: "retry-window", Value: edge.DefaultRetryWindow, Usage: "how soon after a minion socket closed with a request unanswered a same-shape request from a new socket counts as its retry; 0 turns retry recognition off (docs/guarantees.md)", EnvVars: env("retry-window")},
			&cli.IntFlag{Name: "retry-chain", Value: 3, Usage: "tries in one minion retry chain (Salt's return_retry_tries)", EnvVars: env("retry-chain")},
			&cli.DurationFlag{Name: "drain-timeout", Value: edge.DefaultDrainTimeout, Usage: "on SIGTERM, wait at most this long for the replies to requests already taken from minions, so a restart does not make them retry returns the master has; 0 stops at once", EnvVars: env("drain-timeout")},
			&cli.IntFlag{Name: "max-minions", Value: 20_000, Usage: "connections accepted on each minion port", EnvVars: env("max-minions")},
			&cli.IntFlag{Name: "max-connections", Value: edge.DefaultMaxConnections, Usage: "most connections to the core in the edge's pool; it grows past one when requests wait and loss looks random, and never past the minions connected (docs/architecture.md)", EnvVars: env("max-connections")},
			&cli.StringFlag{Name: "tcp-congestion", Usage: "TCP congestion control for the TCP transport's sockets, e.g. bbr, where the kernel allows it (\"\": the system default)", EnvVars: env("tcp-congestion")},
		}, tlsFlags()...), commonFlags("127.0.0.1:9511")...),
		Before: chain(loadConfigFile(map[string]string{"publish_port": "pub-port", "ret_port": "ret-port", "master": "core"}),
			requireFlags("core", "ca", "cert", "key")),
		Action: func(c *cli.Context) error {
			// The other settings are checked by edge.New; these are the flags' own:
			// 0 turns them off, so a negative one is a mistake.
			if err := setting.First([]setting.Check{
				setting.NotNegative("--retry-window", c.Duration("retry-window"), "retry recognition off"),
				setting.NotNegative("--drain-timeout", c.Duration("drain-timeout"), "stop at once"),
			}); err != nil {
				return err
			}
			tlsCfg, err := certs.LoadClient(c.Path("ca"), c.Path("cert"), c.Path("key"))
			if err != nil {
				return err
			}
			mode, err := tunnel.ParseMode(c.String("transport"))
			if err != nil {
				return err
			}
			dial := tunnel.DialOptions{Mode: mode, Proxy: tunnel.ProxyFromEnvironment, TCPCongestion: c.String("tcp-congestion")}
			if p := c.String("proxy"); p != "" {
				if dial.Proxy, err = tunnel.ProxyURL(p); err != nil {
					return fmt.Errorf("--proxy: %w", err)
				}
			}
			reg := newRegistry()
			cfg := edge.Config{
				Name:              nameOr(c.String("name")),
				CoreAddr:          c.String("core"),
				Bind:              c.String("bind"),
				PubPort:           c.Int("pub-port"),
				RetPort:           c.Int("ret-port"),
				Tunnel:            tunnel.Config{TLS: tlsCfg, Logger: slog.Default().With("component", "tunnel")},
				Dial:              dial,
				StateDir:          c.Path("state-dir"),
				MaxPending:        c.Int("max-pending"),
				MaxPendingBytes:   c.Int64("max-pending-bytes"),
				AuthMaxAge:        c.Duration("auth-max-age"),
				RequestMaxAge:     c.Duration("request-max-age"),
				MaxMessageSize:    c.Int("max-message-size"),
				RetryWindow:       c.Duration("retry-window"),
				QUICProbeInterval: c.Duration("quic-probe-interval"),
				MaxRetryChain:     c.Int("retry-chain"),
				DrainTimeout:      c.Duration("drain-timeout"),
				Registry:          reg,
			}
			if cfg.RetryWindow == 0 {
				cfg.RetryWindow = -1 // off: no request is within a negative window
			}
			if cfg.DrainTimeout == 0 {
				cfg.DrainTimeout = -1 // stop at once
			}
			cfg.ZMTP.MaxPeers = c.Int("max-minions")
			cfg.MaxConnections = c.Int("max-connections")
			e, err := edge.New(cfg)
			if err != nil {
				return err
			}
			return runWithAdmin(c.Context, c.String("admin"), reg, e.Ready, func() any { return e.Status() }, e.Run, func(s *admin.Server) {
				s.HandleDebug("close-connection", admin.CloseConnection(e.CloseConnection, slog.Default()))
			})
		},
	}
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// runWithAdmin runs the service and, beside it, the admin endpoint.
// debug, when set, adds the service's debug endpoints (served on loopback only).
func runWithAdmin(ctx context.Context, addr string, reg *prometheus.Registry, ready func() bool, status func() any, run func(context.Context) error,
	debug func(*admin.Server)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if addr != "" {
		srv, err := admin.Listen(addr, reg, ready, status, slog.Default())
		if err != nil {
			return fmt.Errorf("%w (use --admin to pick another address, or --admin '' to disable)", err)
		}
		if debug != nil {
			debug(srv)
		}
		slog.Info("admin endpoint listening", "addr", srv.Addr())
		wg.Go(func() { srv.Serve(ctx) })
	}
	err := run(ctx)
	cancel()
	wg.Wait()
	return err
}

func nameOr(n string) string {
	if n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}

// loadConfigFile applies --config: each YAML key names a flag (old salt-broker keys
// are mapped by aliases). Flags given on the command line or in the environment win.
func loadConfigFile(aliases map[string]string) cli.BeforeFunc {
	return func(c *cli.Context) error {
		path := c.Path("config")
		if path == "" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("--config: %w", err)
		}
		var kv map[string]any
		if err := yaml.Unmarshal(b, &kv); err != nil {
			return fmt.Errorf("--config %s: %w", path, err)
		}
		known := map[string]bool{}
		for _, f := range c.Command.Flags {
			for _, n := range f.Names() {
				known[n] = true
			}
		}
		for key, val := range kv {
			name := key
			if a, ok := aliases[key]; ok {
				name = a
			}
			if !known[name] {
				return usagef("--config %s: unknown key %q (keys are flag names, see --help)", path, key)
			}
			if c.IsSet(name) {
				continue
			}
			var s string
			switch v := val.(type) {
			case []any:
				parts := make([]string, len(v))
				for i, p := range v {
					parts[i] = fmt.Sprint(p)
				}
				s = strings.Join(parts, ",")
			case int:
				s = strconv.Itoa(v)
			default:
				s = fmt.Sprint(v)
			}
			if err := c.Set(name, s); err != nil {
				return usagef("--config %s: key %q: %s %s: %s", path, key, dashed(name), shown(s), wantFor(c.Command.Flags, name, err.Error()))
			}
		}
		return nil
	}
}
