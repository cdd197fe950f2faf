package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "broker.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkTable parses `broker config check`'s table: key → value and source.
func checkTable(t *testing.T, out string) map[string][2]string {
	t.Helper()
	rows := map[string][2]string{}
	re := regexp.MustCompile(`^(\S+)\s+(\S+)\s+(\S.*)$`)
	for _, line := range strings.Split(out, "\n") {
		if m := re.FindStringSubmatch(line); m != nil && m[1] != "KEY" {
			rows[m[1]] = [2]string{m[2], m[3]}
		}
	}
	return rows
}

// Defaults, then the file, then the environment, then flags: each later one wins,
// and `config check` says which one each value came from.
func TestMergeOrder(t *testing.T) {
	_, edgeTLS := pki(t)
	path := writeConfig(t, "core: 127.0.0.1:8443\nca: "+edgeTLS[1]+"\ncert: "+edgeTLS[3]+"\nkey: "+edgeTLS[5]+
		"\npub-port: 5005\nretry-chain: 4\nmax-pending: 7\nlog-level: warn\n")
	r := broker(t, []string{"BROKER_RETRY_CHAIN=5", "BROKER_MAX_PENDING=8"},
		"config", "check", "--config", path, "--", "--max-pending", "9", "--log-format", "json")
	if r.code != 0 {
		t.Fatalf("config check: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	rows := checkTable(t, r.stdout)
	for key, want := range map[string][2]string{
		"bind":        {"0.0.0.0", "default"},
		"pub-port":    {"5005", "file (line 5)"},
		"retry-chain": {"5", "env ($BROKER_RETRY_CHAIN)"},
		"max-pending": {"9", "flag (--max-pending)"},
		"log-level":   {"warn", "file (line 8)"},
		"log-format":  {"json", "flag (--log-format)"},
	} {
		if rows[key] != want {
			t.Errorf("%s: got %q, want %q\n%s", key, rows[key], want, r.stdout)
		}
	}
	if !strings.Contains(r.stdout, "edge configuration from "+path) || !strings.Contains(r.stdout, "OK:") {
		t.Errorf("config check output:\n%s", r.stdout)
	}
}

// A core given only --config with a file lacking its required settings names every
// one of them, and where each can come from, in one line; with them in the file it
// is not refused for a missing flag (urfave/cli's own check ran before the file was
// read: the shipped units restart-looped).
func TestMissingSettingsOneError(t *testing.T) {
	path := writeConfig(t, "listen: 127.0.0.1:0\n")
	r := broker(t, nil, "core", "--config", path)
	checkOneLine(t, r, exitUsage, "missing required settings",
		`master (--master, $BROKER_MASTER or "master:" in the --config file)`, "ca (--ca", "cert (--cert", `key (--key, $BROKER_KEY or "key:"`)

	coreTLS, _ := pki(t)
	path = writeConfig(t, "master: 127.0.0.1\nca: "+coreTLS[1]+"\ncert: "+coreTLS[3]+"\nkey: "+coreTLS[5]+"\n")
	if r := broker(t, nil, "config", "check", "--config", path); r.code != 0 {
		t.Fatalf("config check of a core file with its required settings: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// The old salt-broker's /etc/salt/broker: every key that no longer applies is
// refused on its own line with why, all at once; the ones that map are read as
// today's keys (an edge's master without a port dials 443, and says so).
func TestOldSaltBrokerKeys(t *testing.T) {
	old := `master: salt.example.com
publish_port: '4505'
ret_port: 4506
interface: 0.0.0.0
log_level: warning
log_file: /var/log/salt/broker
user: root
pidfile: /var/run/salt-broker.pid
tcp_keepalive: True
tcp_keepalive_idle: 300
ipv6: False
drop_after_retries: -1
`
	r := broker(t, nil, "edge", "--config", writeConfig(t, old))
	if r.code != exitUsage || r.stdout != "" {
		t.Fatalf("exit %d, stdout %q, want 2 and nothing", r.code, r.stdout)
	}
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	refused := []string{"log_file", "user", "pidfile", "tcp_keepalive", "tcp_keepalive_idle", "ipv6", "drop_after_retries"}
	if len(lines) != 1+len(refused) || !strings.Contains(lines[0], "7 problems:") {
		t.Fatalf("want a header and one line per refused key:\n%s", r.stderr)
	}
	for i, key := range refused {
		if !strings.Contains(lines[1+i], key+": the old salt-broker's key no longer applies: ") {
			t.Errorf("line %d %q does not refuse %s with a reason", i+1, lines[1+i], key)
		}
	}
	for _, mapped := range []string{"master", "publish_port", "ret_port", "interface", "log_level"} {
		if strings.Contains(r.stderr, " "+mapped+":") {
			t.Errorf("%s is refused; it maps to a key of today:\n%s", mapped, r.stderr)
		}
	}

	// The mapped keys alone: read as today's keys.
	_, edgeTLS := pki(t)
	mapped := "master: salt.example.com\npublish_port: '4505'\nret_port: 4516\ninterface: 127.0.0.1\nlog_level: warning\n"
	r = broker(t, []string{"BROKER_CA=" + edgeTLS[1], "BROKER_CERT=" + edgeTLS[3], "BROKER_KEY=" + edgeTLS[5]},
		"config", "check", "--role", "edge", "--config", writeConfig(t, mapped))
	if r.code != 0 {
		t.Fatalf("config check: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	rows := checkTable(t, r.stdout)
	for key, want := range map[string]string{"core": "salt.example.com:443", "pub-port": "4505", "ret-port": "4516",
		"bind": "127.0.0.1", "log-level": "warn"} {
		if rows[key][0] != want || !strings.HasPrefix(rows[key][1], "file") {
			t.Errorf("%s: %q, want %s from the file\n%s", key, rows[key], want, r.stdout)
		}
	}
	if !strings.Contains(r.stdout, "note: the core address has no port: dialing port 443") {
		t.Errorf("no note about the port added:\n%s", r.stdout)
	}
	// Both the old and the new name of one setting: which one wins would be a guess.
	r = broker(t, nil, "edge", "--config", writeConfig(t, "publish_port: 4505\npub-port: 4505\n"))
	checkOneLine(t, r, exitUsage, "publish_port (the old salt-broker's name for pub-port) and pub-port (line 2) are both set")
}

// Values keep their YAML types, and a wrong one says what was wanted; unknown keys
// and the other role's keys are refused, all at once.
func TestConfigTypes(t *testing.T) {
	r := broker(t, nil, "edge", "--config", writeConfig(t, "core: x:1\npub-port: \"4505\"\nauth-max-age: 10\nmax-minions: [1]\nbogus: 1\nring-age: 1m\n"))
	if r.code != exitUsage {
		t.Fatalf("exit %d, want 2\n%s", r.code, r.stderr)
	}
	for _, want := range []string{
		`line 2: pub-port: "4505" is a string; want a whole number`,
		`line 3: auth-max-age: "10" is a whole number; want a duration such as 500ms, 30s, 5m or 1h`,
		`line 4: max-minions: a list; want a whole number`,
		`line 5: unknown key "bogus"`,
		`line 6: "ring-age" is a setting of a core, not of an edge`,
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not say %q:\n%s", want, r.stderr)
		}
	}
	r = broker(t, []string{"BROKER_MAX_PENDING=many"}, "edge", "--config", writeConfig(t, "core: x:1\n"))
	checkOneLine(t, r, exitUsage, "BROKER_MAX_PENDING=many: want a whole number")
	// A bad value is named, with its line, before certificates that would not load.
	r = broker(t, nil, "core", "--config", writeConfig(t, "master: m\nca: /nonexistent/ca.crt\ncert: c\nkey: k\nmax-in-flight: -1\n"))
	checkOneLine(t, r, exitUsage, "--max-in-flight -1: must be at least 1 (from --config ", ", line 5)")
}

// log-level and log-format are settings like the others: in the file, and after the
// subcommand (`broker edge --log-format json`). A non-loopback admin address is
// logged at WARN (no authentication there) before anything binds; the edge is then
// refused for a bad --max-pending, so it never starts: the warning's line shows the
// format in use.
func TestLoggingSettings(t *testing.T) {
	_, edgeTLS := pki(t)
	base := append([]string{"edge", "--core", "127.0.0.1:1", "--bind", "127.0.0.1", "--pub-port", freePort(t),
		"--ret-port", freePort(t), "--max-pending", "-1"}, edgeTLS...)
	publicAdmin := "0.0.0.0:" + freePort(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"file", append(append([]string{}, base...), "--config", writeConfig(t, "log-format: json\nadmin: "+publicAdmin+"\n"))},
		{"flag after the subcommand", append(append([]string{}, base...), "--log-format", "json", "--admin", publicAdmin)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := broker(t, nil, tc.args...)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if r.code != exitUsage || len(lines) != 2 || !strings.Contains(lines[1], "--max-pending -1") {
				t.Fatalf("exit %d, want 2 with a warning and the refusal:\n%s", r.code, r.stderr)
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
				t.Fatalf("the warning is not JSON (%v): %s", err, lines[0])
			}
			if msg, _ := rec["msg"].(string); rec["level"] != "WARN" || !strings.Contains(msg, "not on loopback") || rec["admin"] != publicAdmin {
				t.Errorf("warning: %v", rec)
			}
		})
	}
	// A bad level in the file is refused naming the file's line.
	r := broker(t, nil, append(append([]string{}, base...), "--config", writeConfig(t, "log-level: loud\n"))...)
	checkOneLine(t, r, exitUsage, `--log-level "loud"`, "line 1")
	// `config check` shows the warning too.
	out := broker(t, []string{"BROKER_CA=" + edgeTLS[1], "BROKER_CERT=" + edgeTLS[3], "BROKER_KEY=" + edgeTLS[5]},
		"config", "check", "--config", writeConfig(t, "core: x:1\nadmin: 0.0.0.0:9511\n"), "--role", "edge")
	if !strings.Contains(out.stdout, "warning: admin endpoint is not on loopback") {
		t.Errorf("no warning for a non-loopback admin address:\n%s", out.stdout)
	}
}

// `broker config example` prints deploy/edge.yaml and deploy/core.yaml (one
// source, embedded), which name every setting, and each "# key: value" there is the
// default the code uses.
func TestConfigExample(t *testing.T) {
	for _, r := range []role{edgeRole(), coreRole()} {
		t.Run(r.name, func(t *testing.T) {
			out := broker(t, nil, "config", "example", r.name)
			deployed, err := os.ReadFile(filepath.Join("..", "..", "deploy", r.name+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if out.code != 0 || out.stdout != string(deployed) || out.stdout != string(example(r.name)) {
				t.Fatalf("broker config example %s (exit %d) is not deploy/%s.yaml", r.name, out.code, r.name)
			}
			text := out.stdout
			defaults := r.defaults()
			for _, f := range r.fields() {
				m := regexp.MustCompile(`(?m)^(# )?` + regexp.QuoteMeta(f.key) + `: (.*)$`).FindStringSubmatch(text)
				if m == nil && f.key != "allow-edge" && f.key != "deny-edge" { // lists: shown indented, as examples
					t.Errorf("the example does not show %s", f.key)
					continue
				}
				if m == nil || m[1] == "" {
					continue // set to an example value
				}
				got := reflect.New(f.typ)
				if err := yaml.Unmarshal([]byte(m[2]), got.Interface()); err != nil {
					t.Errorf("%s: %q: %v", f.key, m[2], err)
					continue
				}
				if want := defaults.Field(f.index); !reflect.DeepEqual(got.Elem().Interface(), want.Interface()) {
					t.Errorf("the example says %s defaults to %v, the code to %v", f.key, got.Elem(), want)
				}
			}
		})
	}
	checkOneLine(t, broker(t, nil, "config", "example", "proxy"), exitUsage, `unknown role "proxy"`)
}

// Every setting has a help category, its flag shows the code's default, and
// --help groups them.
func TestSettingsAndHelp(t *testing.T) {
	cats := map[string]bool{catConnection: true, catTLS: true, catLimits: true, catAdmin: true, catLogging: true}
	for _, r := range []role{edgeRole(), coreRole()} {
		for _, f := range r.fields() {
			if !cats[f.category] {
				t.Errorf("%s %s: category %q is none of %v", r.name, f.key, f.category, cats)
			}
			if f.usage == "" {
				t.Errorf("%s %s: no usage", r.name, f.key)
			}
		}
		out := broker(t, nil, r.name, "--help")
		for c := range cats {
			if !strings.Contains(out.stdout, "\n   "+c+"\n") {
				t.Errorf("broker %s --help has no %s group:\n%s", r.name, c, out.stdout)
			}
		}
	}
	if out := broker(t, nil, "edge", "--help"); !strings.Contains(out.stdout, "[$BROKER_MAX_PENDING] (default: 20000)") {
		t.Errorf("--max-pending's help does not show its variable and default:\n%s", out.stdout)
	}
}
