package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/core"
	"github.com/salt-broker/salt-broker/edge"
	"github.com/salt-broker/salt-broker/internal/admin"
	"github.com/salt-broker/salt-broker/internal/setting"
	"github.com/salt-broker/salt-broker/tunnel"
)

// env is the environment twin of a flag of the commands without typed settings
// (certs, status): urfave/cli reads it.
func env(name string) []string { return []string{envName(name)} }

// Admin endpoint defaults: the core's and the edge's, so both run on one host.
const (
	defaultCoreAdmin = "127.0.0.1:9510"
	defaultEdgeAdmin = "127.0.0.1:9511"
	defaultLogLevel  = "info"
	defaultLogFormat = "text"
)

// coreSettings is `broker core`'s configuration. A setting is one line here: its
// YAML key is its flag name, its environment variable BROKER_ + the key in
// capitals; its default comes from coreDefaults (the core package's Defaults), and
// the Action below reads it.
type coreSettings struct {
	Master        string `yaml:"master" cat:"Connection" required:"" usage:"the Salt master's address"`
	MasterPubPort int    `yaml:"master-pub-port" cat:"Connection" usage:"the master's publish_port"`
	MasterRetPort int    `yaml:"master-ret-port" cat:"Connection" usage:"the master's ret_port"`
	Listen        string `yaml:"listen" cat:"Connection" usage:"address for edges, UDP and TCP on the same port"`

	CA        string   `yaml:"ca" cat:"TLS" required:"" cred:"" usage:"CA certificate that signed both sides (from 'broker certs init'); relative: in $CREDENTIALS_DIRECTORY, else beside the config file"`
	Cert      string   `yaml:"cert" cat:"TLS" required:"" cred:"" usage:"this side's certificate (from 'broker certs issue')"`
	Key       string   `yaml:"key" cat:"TLS" required:"" cred:"" usage:"this side's private key"`
	AllowEdge nameList `yaml:"allow-edge" cat:"TLS" usage:"accept only edges with these certificate names (default: any edge the CA signed)"`
	DenyEdge  nameList `yaml:"deny-edge" cat:"TLS" usage:"refuse these edge certificates: SHA-256 fingerprints (as 'broker certs show' prints), or files of them, one a line; files are read again at SIGHUP"`

	RingCount         int           `yaml:"ring-count" cat:"Limits" usage:"replay ring: publications kept for edges that reconnect"`
	RingBytes         int64         `yaml:"ring-bytes" cat:"Limits" usage:"replay ring: payload bytes kept"`
	RingAge           time.Duration `yaml:"ring-age" cat:"Limits" usage:"replay ring: oldest publication kept (the longest outage replayed)"`
	MaxInFlight       int           `yaml:"max-in-flight" cat:"Limits" usage:"requests at the master at once; a backlog drains at this pace"`
	DrainTimeout      time.Duration `yaml:"drain-timeout" cat:"Limits" usage:"on SIGTERM, wait at most this long for the master to answer the requests in flight (and their edges to confirm), so a restart does not send them to the master twice; 0 stops at once"`
	DedupTTL          time.Duration `yaml:"dedup-ttl" cat:"Limits" usage:"how long a request ID is remembered (must exceed the longest outage absorbed)"`
	WriteTimeout      time.Duration `yaml:"write-timeout" cat:"Limits" usage:"a transfer to an edge that makes no progress for this long is cut (an idle deadline: a slow transfer that moves is never cut)"`
	BulkInFlightBytes int64         `yaml:"bulk-in-flight-bytes" cat:"Limits" usage:"bytes of large replies (over 64 KiB) in flight at once per edge connection; the others wait their turn, first come first served, and small replies never wait"`
	MaxMessageSize    int           `yaml:"max-message-size" cat:"Limits" usage:"largest publication, request or reply in bytes; larger ones are refused and counted"`

	Name  string `yaml:"name" cat:"Admin" usage:"name in logs and status (default: host name)"`
	Admin string `yaml:"admin" cat:"Admin" usage:"admin HTTP address for /metrics, /healthz, /readyz, /status (\"\" disables); it has no authentication: keep it on loopback"`
	Pprof bool   `yaml:"pprof" cat:"Admin" usage:"serve Go's profiler at /debug/pprof/ on the admin endpoint (loopback --admin only; off by default)"`

	LogLevel  string `yaml:"log-level" cat:"Logging" usage:"debug, info, warn or error"`
	LogFormat string `yaml:"log-format" cat:"Logging" usage:"text or json"`
}

func coreDefaults() coreSettings {
	var d core.Config
	d.Defaults()
	return coreSettings{
		MasterPubPort: d.MasterPubPort, MasterRetPort: d.MasterRetPort, Listen: d.Listen,
		RingCount: d.Ring.Count, RingBytes: d.Ring.Bytes, RingAge: d.Ring.Age,
		MaxInFlight: d.MaxInFlight, DrainTimeout: d.DrainTimeout, DedupTTL: d.Table.TTL,
		WriteTimeout: d.WriteTimeout, BulkInFlightBytes: d.BulkInFlightBytes, MaxMessageSize: d.MaxMessageSize,
		Admin: defaultCoreAdmin, LogLevel: defaultLogLevel, LogFormat: defaultLogFormat,
	}
}

// edgeSettings is `broker edge`'s configuration (see coreSettings).
type edgeSettings struct {
	Core              string        `yaml:"core" cat:"Connection" required:"" usage:"the core's host:port (443 if no port is given)"`
	Bind              string        `yaml:"bind" cat:"Connection" usage:"address minions use as 'master'"`
	PubPort           int           `yaml:"pub-port" cat:"Connection" usage:"publish port: must be the port the real master announces (its publish_port)"`
	RetPort           int           `yaml:"ret-port" cat:"Connection" usage:"ret port (the minions' master_port)"`
	Transport         string        `yaml:"transport" cat:"Connection" usage:"auto (QUIC, falling back to TCP), quic or tcp"`
	QUICProbeInterval time.Duration `yaml:"quic-probe-interval" cat:"Connection" usage:"while on the TCP fallback (transport auto), try QUIC this often and move back when it works"`
	Proxy             string        `yaml:"proxy" cat:"Connection" usage:"HTTP proxy for the TCP transport, http://[user:pass@]host:port (default: HTTPS_PROXY/NO_PROXY from the environment)"`
	TCPCongestion     string        `yaml:"tcp-congestion" cat:"Connection" usage:"TCP congestion control for the TCP transport's sockets, e.g. bbr, where the kernel allows it (\"\": the system default)"`
	MaxConnections    int           `yaml:"max-connections" cat:"Connection" usage:"most connections to the core in the edge's pool; it grows past one when requests wait and loss looks random, and never past the minions connected (docs/architecture.md)"`

	CA   string `yaml:"ca" cat:"TLS" required:"" cred:"" usage:"CA certificate that signed both sides (from 'broker certs init'); relative: in $CREDENTIALS_DIRECTORY, else beside the config file"`
	Cert string `yaml:"cert" cat:"TLS" required:"" cred:"" usage:"this side's certificate (from 'broker certs issue')"`
	Key  string `yaml:"key" cat:"TLS" required:"" cred:"" usage:"this side's private key"`

	MaxPending      int           `yaml:"max-pending" cat:"Limits" usage:"requests held until their reply; past it new ones are dropped and the minion retries"`
	MaxPendingBytes int64         `yaml:"max-pending-bytes" cat:"Limits" usage:"bytes of the requests held until their reply; past it new ones are dropped and the minion retries (a request alone always fits)"`
	AuthMaxAge      time.Duration `yaml:"auth-max-age" cat:"Limits" usage:"auth requests older than this are stale (the minion has retried) and dropped"`
	RequestMaxAge   time.Duration `yaml:"request-max-age" cat:"Limits" usage:"other requests older than this are dropped unsent"`
	RetryWindow     time.Duration `yaml:"retry-window" cat:"Limits" usage:"how soon after a minion socket closed with a request unanswered a same-shape request from a new socket counts as its retry; 0 turns retry recognition off (docs/guarantees.md)"`
	RetryChain      int           `yaml:"retry-chain" cat:"Limits" usage:"tries in one minion retry chain (Salt's return_retry_tries)"`
	DrainTimeout    time.Duration `yaml:"drain-timeout" cat:"Limits" usage:"on SIGTERM, wait at most this long for the replies to requests already taken from minions, so a restart does not make them retry returns the master has; 0 stops at once"`
	MaxMinions      int           `yaml:"max-minions" cat:"Limits" usage:"connections accepted on each minion port"`
	MaxMessageSize  int           `yaml:"max-message-size" cat:"Limits" usage:"largest publication, request or reply in bytes; larger ones are refused and counted"`

	Name     string `yaml:"name" cat:"Admin" usage:"name in logs and status (default: host name)"`
	Admin    string `yaml:"admin" cat:"Admin" usage:"admin HTTP address for /metrics, /healthz, /readyz, /status (\"\" disables); it has no authentication: keep it on loopback"`
	Pprof    bool   `yaml:"pprof" cat:"Admin" usage:"serve Go's profiler at /debug/pprof/ on the admin endpoint (loopback --admin only; off by default)"`
	StateDir string `yaml:"state-dir" cat:"Admin" usage:"directory for the publication cursor, so a restarted edge replays what it missed (\"\" keeps nothing)"`

	LogLevel  string `yaml:"log-level" cat:"Logging" usage:"debug, info, warn or error"`
	LogFormat string `yaml:"log-format" cat:"Logging" usage:"text or json"`
}

func edgeDefaults() edgeSettings {
	var d edge.Config
	d.Defaults()
	return edgeSettings{
		Bind: d.Bind, PubPort: d.PubPort, RetPort: d.RetPort, Transport: string(tunnel.ModeAuto),
		QUICProbeInterval: d.QUICProbeInterval, MaxConnections: d.MaxConnections,
		MaxPending: d.MaxPending, MaxPendingBytes: d.MaxPendingBytes, AuthMaxAge: d.AuthMaxAge,
		RequestMaxAge: d.RequestMaxAge, RetryWindow: d.RetryWindow, RetryChain: d.MaxRetryChain,
		DrainTimeout: d.DrainTimeout, MaxMinions: edge.DefaultMaxMinions, MaxMessageSize: d.MaxMessageSize,
		Admin: defaultEdgeAdmin, LogLevel: defaultLogLevel, LogFormat: defaultLogFormat,
	}
}

func coreRole() role {
	return role{name: "core", defaults: func() reflect.Value { return reflect.ValueOf(coreDefaults()) }, legacy: legacyKeys("core")}
}

func edgeRole() role {
	return role{name: "edge", defaults: func() reflect.Value { return reflect.ValueOf(edgeDefaults()) }, legacy: legacyKeys("edge"),
		finish: func(l *loaded) {
			s := l.settings.Addr().Interface().(*edgeSettings)
			// The old salt-broker's master: was a host alone; so may core: be.
			if s.Core != "" && !hasPort(s.Core) {
				old := s.Core
				s.Core = net.JoinHostPort(trimBrackets(s.Core), "443")
				l.how["core"] = "port 443 added"
				l.notes = append(l.notes, note{"the core address has no port: dialing port 443, the core's default listen port", []any{"core", old, "dialing", s.Core}})
			}
		}}
}

// configFlag is every role's --config.
func configFlag() cli.Flag {
	return &cli.PathFlag{Name: "config", Usage: "YAML file of these settings, keys as the flag names (see 'broker config example'); environment and flags override it [$BROKER_CONFIG]"}
}

func coreCommand() *cli.Command {
	return &cli.Command{
		Name:  "core",
		Usage: "run beside the Salt master: connect to it and serve edges",
		Description: `Connects SUB to the master's publish port and DEALER to its ret port, and listens
for edges on UDP (QUIC) and TCP (TLS + smux) on the same port.

Settings come from, lowest first: the defaults shown here, --config FILE, the
environment (BROKER_*), the command line. 'broker config check --config FILE'
prints what a file amounts to.

Example:
   broker core --config /etc/salt-broker/core.yaml
   broker core --master 127.0.0.1 --listen :443 \
     --ca /etc/salt-broker/ca.crt --cert /etc/salt-broker/core.crt --key /etc/salt-broker/core.key`,
		Flags: append([]cli.Flag{configFlag()}, coreRole().flags()...),
		Action: func(c *cli.Context) error {
			l, err := start(c, coreRole())
			if err != nil {
				return err
			}
			cfg, err := coreConfig(l)
			if err != nil {
				return err
			}
			k, err := core.New(cfg)
			if err != nil {
				return l.explain(err)
			}
			s := l.settings.Interface().(coreSettings)
			reload := func() error {
				src := k.Certs().Source() // the files as started, if the settings no longer load
				if l2, err := load(c, coreRole()); err != nil {
					slog.Error("reload: the settings do not load; reading the certificate files named at start", "err", err)
				} else {
					src = coreSource(l2.settings.Interface().(coreSettings))
				}
				return k.Reload(src)
			}
			return runWithAdmin(c.Context, s.Admin, s.Pprof, cfg.Registry.(*prometheus.Registry), k.Ready, func() any { return k.Status() },
				withCertificates(k.Certs(), slog.Default(), reload, k.Run), nil)
		},
	}
}

// coreConfig turns the settings into core.Config, loading the certificates.
func coreConfig(l *loaded) (core.Config, error) {
	s := l.settings.Interface().(coreSettings)
	// The other settings are checked by core.New; this one is the flag's own: 0
	// stops at once, so a negative one is a mistake.
	if err := setting.First([]setting.Check{
		setting.NotNegative("--drain-timeout", s.DrainTimeout, "stop at once"),
	}); err != nil {
		return core.Config{}, l.explain(err)
	}
	cfg := core.Config{
		Name:              nameOr(s.Name),
		MasterHost:        s.Master,
		MasterPubPort:     s.MasterPubPort,
		MasterRetPort:     s.MasterRetPort,
		Listen:            s.Listen,
		Tunnel:            tunnel.Config{Logger: slog.Default().With("component", "tunnel")},
		Ring:              core.RingLimits{Count: s.RingCount, Bytes: s.RingBytes, Age: s.RingAge},
		Table:             core.TableLimits{TTL: s.DedupTTL},
		MaxInFlight:       s.MaxInFlight,
		MaxMessageSize:    s.MaxMessageSize,
		DrainTimeout:      s.DrainTimeout,
		WriteTimeout:      s.WriteTimeout,
		BulkInFlightBytes: s.BulkInFlightBytes,
		Registry:          newRegistry(),
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = -1 // stop at once
	}
	// Every value first, so one bad setting is not hidden behind a certificate
	// that does not load yet (core.New checks again, after its own Defaults).
	if err := validated(cfg); err != nil {
		return core.Config{}, l.explain(err)
	}
	st, err := certs.NewStore(certs.RoleCore, coreSource(s))
	if err != nil {
		return core.Config{}, err
	}
	cfg.Certs = st
	if err := certs.RegisterExpiry(cfg.Registry, st); err != nil {
		return core.Config{}, err
	}
	return cfg, nil
}

// validated checks a config as New will, on a copy: Defaults must not leak into
// the config New gets (0 is also how some settings are turned off).
func validated[C any, P interface {
	*C
	Defaults()
	Validate() error
}](cfg C) error {
	P(&cfg).Defaults()
	return P(&cfg).Validate()
}

func edgeCommand() *cli.Command {
	return &cli.Command{
		Name:  "edge",
		Usage: "run near the minions: serve their ZeroMQ ports and tunnel to the core",
		Description: `Binds the minions' publish port (PUB) and ret port (ROUTER) at once, whether or not
the core is reachable, and keeps one connection to the core. Point minions at it by
changing only 'master:' in their config to an address of this host.

Settings come from, lowest first: the defaults shown here, --config FILE, the
environment (BROKER_*), the command line. 'broker config check --config FILE'
prints what a file amounts to.

Example:
   broker edge --config /etc/salt-broker/edge.yaml
   broker edge --core core.example.net:443 \
     --ca /etc/salt-broker/ca.crt --cert /etc/salt-broker/edge.crt --key /etc/salt-broker/edge.key`,
		Flags: append([]cli.Flag{configFlag()}, edgeRole().flags()...),
		Action: func(c *cli.Context) error {
			l, err := start(c, edgeRole())
			if err != nil {
				return err
			}
			cfg, err := edgeConfig(l)
			if err != nil {
				return err
			}
			e, err := edge.New(cfg)
			if err != nil {
				return l.explain(err)
			}
			s := l.settings.Interface().(edgeSettings)
			reload := func() error {
				src := e.Certs().Source()
				if l2, err := load(c, edgeRole()); err != nil {
					slog.Error("reload: the settings do not load; reading the certificate files named at start", "err", err)
				} else {
					s2 := l2.settings.Interface().(edgeSettings)
					src = certs.Source{CA: s2.CA, Cert: s2.Cert, Key: s2.Key}
				}
				return e.Reload(src)
			}
			return runWithAdmin(c.Context, s.Admin, s.Pprof, cfg.Registry.(*prometheus.Registry), e.Ready, func() any { return e.Status() },
				withCertificates(e.Certs(), slog.Default(), reload, e.Run), func(s *admin.Server) {
					s.HandleDebug("close-connection", admin.CloseConnection(e.CloseConnection, slog.Default()))
				})
		},
	}
}

// edgeConfig turns the settings into edge.Config, loading the certificates.
func edgeConfig(l *loaded) (edge.Config, error) {
	s := l.settings.Interface().(edgeSettings)
	// The other settings are checked by edge.New; these are the flags' own: 0
	// turns them off, so a negative one is a mistake.
	if err := setting.First([]setting.Check{
		setting.NotNegative("--retry-window", s.RetryWindow, "retry recognition off"),
		setting.NotNegative("--drain-timeout", s.DrainTimeout, "stop at once"),
	}); err != nil {
		return edge.Config{}, l.explain(err)
	}
	mode, err := tunnel.ParseMode(s.Transport)
	if err != nil {
		return edge.Config{}, usagef("--transport %q: want auto, quic or tcp%s", s.Transport, l.from("transport"))
	}
	dial := tunnel.DialOptions{Mode: mode, Proxy: tunnel.ProxyFromEnvironment, TCPCongestion: s.TCPCongestion}
	if s.Proxy != "" {
		if dial.Proxy, err = tunnel.ProxyURL(s.Proxy); err != nil {
			return edge.Config{}, usagef("--proxy: %w%s", err, l.from("proxy"))
		}
	}
	cfg := edge.Config{
		Name:              nameOr(s.Name),
		CoreAddr:          s.Core,
		Bind:              s.Bind,
		PubPort:           s.PubPort,
		RetPort:           s.RetPort,
		Tunnel:            tunnel.Config{Logger: slog.Default().With("component", "tunnel")},
		Dial:              dial,
		StateDir:          s.StateDir,
		MaxPending:        s.MaxPending,
		MaxPendingBytes:   s.MaxPendingBytes,
		AuthMaxAge:        s.AuthMaxAge,
		RequestMaxAge:     s.RequestMaxAge,
		MaxMessageSize:    s.MaxMessageSize,
		RetryWindow:       s.RetryWindow,
		QUICProbeInterval: s.QUICProbeInterval,
		MaxRetryChain:     s.RetryChain,
		DrainTimeout:      s.DrainTimeout,
		MaxConnections:    s.MaxConnections,
		Registry:          newRegistry(),
	}
	if cfg.RetryWindow == 0 {
		cfg.RetryWindow = -1 // off: no request is within a negative window
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = -1 // stop at once
	}
	cfg.ZMTP.MaxPeers = s.MaxMinions
	if cfg.ZMTP.MaxPeers == 0 {
		cfg.ZMTP.MaxPeers = edge.DefaultMaxMinions
	}
	if err := validated(cfg); err != nil { // see coreConfig
		return edge.Config{}, l.explain(err)
	}
	st, err := certs.NewStore(certs.RoleEdge, certs.Source{CA: s.CA, Cert: s.Cert, Key: s.Key})
	if err != nil {
		return edge.Config{}, err
	}
	cfg.Certs = st
	if err := certs.RegisterExpiry(cfg.Registry, st); err != nil {
		return edge.Config{}, err
	}
	return cfg, nil
}

// start loads a role's configuration and sets up logging from it: what the
// loading noticed is logged once the level and format are known.
func start(c *cli.Context, r role) (*loaded, error) {
	l, err := load(c, r)
	if err != nil {
		return nil, err
	}
	level, format := l.get("log-level").String(), l.get("log-format").String()
	if _, err := newLogger(level, defaultLogFormat); err != nil {
		return nil, usagef("%w%s", err, l.from("log-level"))
	}
	log, err := newLogger(level, format)
	if err != nil {
		return nil, usagef("%w%s", err, l.from("log-format"))
	}
	slog.SetDefault(log)
	for _, n := range l.notes {
		slog.Info(n.msg, n.args...)
	}
	for _, n := range l.warns {
		slog.Warn(n.msg, n.args...)
	}
	return l, nil
}
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// runWithAdmin runs the service and, beside it, the admin endpoint.
// debug, when set, adds the service's debug endpoints (served on loopback only).
func runWithAdmin(ctx context.Context, addr string, pprof bool, reg *prometheus.Registry, ready func() bool, status func() any, run func(context.Context) error,
	debug func(*admin.Server)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if addr != "" {
		srv, err := admin.Listen(addr, reg, ready, status, slog.Default())
		if err != nil {
			return fmt.Errorf("%w (use --admin to pick another address, or --admin '' to disable)", err)
		}
		if pprof {
			if err := srv.EnablePprof(); err != nil {
				_ = srv.Close()
				return err
			}
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

// coreSource is what the core's certificate store loads, at start and at SIGHUP.
func coreSource(s coreSettings) certs.Source {
	return certs.Source{CA: s.CA, Cert: s.Cert, Key: s.Key, AllowEdges: s.AllowEdge, DenyEdges: s.DenyEdge}
}
