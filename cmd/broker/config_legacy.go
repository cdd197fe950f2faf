package main

import (
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// The old salt-broker's /etc/salt/broker keys (the pip salt-broker's and Uyuni's,
// which read the same file): each is either read as today's key or refused with the
// reason it no longer applies. All are reported at once (load), so an old file is
// fixed in one pass.

// legacyRule is what an old key becomes.
type legacyRule struct {
	to   string                       // the key it is read as; "" refuses it
	why  string                       // why it is refused
	conv func(string) (string, error) // rewrites a mapped value (log_level's names)
}

const (
	whyLogFile = "the broker logs to stderr, which systemd's journal keeps (journalctl -u salt-broker-edge or -core); log-format json suits collectors"
	whyLogFmt  = "log lines have one layout, text or JSON: set log-format"
	whyKeep    = "the tunnel watches the link itself (a ping every 250 ms, a stall after 2 s); minions keep their own tcp_keepalive in /etc/salt/minion"
	whyZMQ     = "a ZeroMQ option of the old proxy's socket to the master: the core reconnects to the master itself and the tunnel has its own liveness checks"
	whyBackend = "the edge binds the minion ports at once and holds requests (max-pending) until the core and master answer; nothing is dropped meanwhile"
	whySalt    = "a Salt loader option: the broker loads no Salt code"
)

// legacyKeys returns the old keys as the role reads them. master is the core's own
// key; for an edge it names what is now the core (its port defaults to 443).
func legacyKeys(roleName string) map[string]legacyRule {
	edge := roleName == "edge"
	pick := func(e, c string) string {
		if edge {
			return e
		}
		return c
	}
	m := map[string]legacyRule{
		"publish_port":        {to: pick("pub-port", "master-pub-port")},
		"ret_port":            {to: pick("ret-port", "master-ret-port")},
		"log_level":           {to: "log-level", conv: saltLogLevel},
		"log_file":            {why: whyLogFile},
		"log_to_file":         {why: whyLogFile},
		"log_datefmt":         {why: whyLogFmt},
		"log_datefmt_logfile": {why: whyLogFmt},
		"log_fmt_console":     {why: whyLogFmt},
		"log_fmt_logfile":     {why: whyLogFmt},
		"log_granular_levels": {why: whyLogFmt},
		"user":                {why: "the broker never switches user: the systemd unit runs it as its own dynamic user (DynamicUser=yes)"},
		"pidfile":             {why: "the broker does not daemonize: systemd tracks its process"},
		"ipv6":                {why: "the address decides: give " + pick("bind", "listen") + " an IPv6 address (such as [::]) for IPv6"},
		"tcp_keepalive":       {why: whyKeep},
		"tcp_keepalive_idle":  {why: whyKeep},
		"tcp_keepalive_cnt":   {why: whyKeep},
		"tcp_keepalive_intvl": {why: whyKeep},
		"connect_timeout":     {why: whyZMQ},
		"reconnect_ivl":       {why: whyZMQ},
		"heartbeat_ivl":       {why: whyZMQ},
		"heartbeat_timeout":   {why: whyZMQ},
		"drop_after_retries":  {why: whyBackend},
		"wait_for_backend":    {why: whyBackend},
		"conf_file":           {why: "give the file with --config"},
		"extension_modules":   {why: whySalt},
		"verify_env":          {why: whySalt},
	}
	if edge {
		m["master"] = legacyRule{to: "core"}
		m["interface"] = legacyRule{to: "bind"}
	} else {
		m["interface"] = legacyRule{why: "the core binds nothing for minions: its address for edges is listen (host:port, UDP and TCP)"}
	}
	return m
}

// saltLogLevel maps Salt's log levels onto the broker's four.
func saltLogLevel(s string) (string, error) {
	switch strings.ToLower(s) {
	case "all", "garbage", "trace", "debug":
		return "debug", nil
	case "profile", "info":
		return "info", nil
	case "warning", "warn":
		return "warn", nil
	case "error", "critical", "quiet":
		return "error", nil
	}
	return "", fmt.Errorf("want one of Salt's levels (debug, info, warning, error, critical, ...)")
}

// applyLegacy reads an old key present in the file as its new key, or refuses it.
func (l *loaded) applyLegacy(fields []field, key string, r legacyRule, n *yaml.Node, probs *problems) {
	if r.to == "" {
		probs.add("line %d: %s: the old salt-broker's key no longer applies: %s; remove it", n.Line, key, r.why)
		return
	}
	if line, both := l.line[r.to]; both {
		probs.add("line %d: %s (the old salt-broker's name for %s) and %s (line %d) are both set; keep %s", n.Line, key, r.to, r.to, line, r.to)
		return
	}
	f, ok := l.field(fields, r.to)
	if !ok {
		panic("config: old key " + key + " maps to unknown " + r.to)
	}
	if n.Kind != yaml.ScalarNode {
		probs.add("line %d: %s: want a single value, not %s", n.Line, key, kindName(n))
		return
	}
	val := n.Value
	if r.conv != nil {
		var err error
		if val, err = r.conv(val); err != nil {
			probs.add("line %d: %s %s: %s", n.Line, key, shown(n.Value), err)
			return
		}
	}
	// Leniently typed: the old broker took publish_port: '4505' as well as 4505.
	if err := setFromString(l.settings.Field(f.index), val); err != nil {
		probs.add("line %d: %s %s: %s", n.Line, key, shown(n.Value), err)
		return
	}
	l.src[r.to] = fromFile
	l.line[r.to] = n.Line
	l.how[r.to] = "from the old key " + key
	l.notes = append(l.notes, note{"config: the old salt-broker's key is read as today's", []any{"config", l.path, "old", key, "as", r.to}})
}
