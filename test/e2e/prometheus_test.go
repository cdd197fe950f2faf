package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/salt-broker/salt-broker/test/harness"
)

// lookTool finds a binary Debian's prometheus package installs (`make deps`).
func lookTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: `make deps` installs Debian's prometheus package, which brings it (%v)", name, err)
	}
	return p
}

// The alert rules load in promtool and pass their unit tests (alerts_test.yml).
func TestAlertRules(t *testing.T) {
	promtool := lookTool(t, "promtool")
	dir := filepath.Join(harness.ModuleRoot(), "deploy", "prometheus")
	ctx := ctxFor(t, time.Minute)
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.CommandContext(ctx, promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// promExpr is one PromQL expression of the dashboard or the rules, and where it is.
type promExpr struct{ where, expr string }

// dashboardExprs returns every target's expression and every variable's query.
func dashboardExprs(t *testing.T, path string) []promExpr {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Type       string `json:"type"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []promExpr
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, promExpr{"dashboard panel " + strconv.Quote(p.Title), tg.Expr})
		}
	}
	// label_values(<selector>, label): the selector must have series.
	lv := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := lv.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Fatalf("dashboard variable %s: %q is not label_values(selector, label)", v.Name, v.Definition)
		}
		out = append(out, promExpr{"dashboard variable " + v.Name, m[1]})
	}
	return out
}

// ruleExprs returns every rule's expression.
func ruleExprs(t *testing.T, path string) []promExpr {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert  string `yaml:"alert"`
				Record string `yaml:"record"`
				Expr   string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []promExpr
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out = append(out, promExpr{"alert " + r.Alert + r.Record, r.Expr})
		}
	}
	return out
}

// Grafana's variables, as the dashboard's "All" choice expands them.
var grafanaVars = strings.NewReplacer(`$__rate_interval`, `1m`, `$__interval`, `15s`, `$edge`, `.+`, `$core`, `.+`)

// selectorRE finds the vector selectors of an expression: a metric name of ours
// and its label matchers, if any. (Every expression names its metrics this way.)
var selectorRE = regexp.MustCompile(`\b(salt_broker_[a-z0-9_]+)(\{[^}]*\})?`)

// promAPI queries a Prometheus HTTP API.
type promAPI struct{ base string }

func (p promAPI) get(ctx context.Context, path string, q url.Values, into any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+path+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s %s: %s", path, q.Encode(), env.Error)
	}
	return json.Unmarshal(env.Data, into)
}

// series returns how many series match a selector now.
func (p promAPI) series(ctx context.Context, selector string) (int, error) {
	var data []map[string]string
	start := strconv.FormatInt(time.Now().Add(-10*time.Minute).Unix(), 10)
	err := p.get(ctx, "/api/v1/series", url.Values{"match[]": {selector}, "start": {start}}, &data)
	return len(data), err
}

// startPrometheus runs a real Prometheus on loopback scraping targets every
// second with rules loaded; it is killed when the test ends, pass or fail.
func startPrometheus(t *testing.T, rules string, targets map[string]string) promAPI {
	t.Helper()
	bin := lookTool(t, "prometheus")
	dir := t.TempDir()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [%q]\nscrape_configs:\n", rules)
	for job, addr := range targets {
		fmt.Fprintf(&cfg, "  - job_name: %s\n    static_configs: [{targets: [%q]}]\n", job, addr)
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(harness.FreePort(t, "127.0.0.1"))
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cancel()
		<-exited
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})
	p := promAPI{base: "http://" + addr}
	// Ready when its API answers and every target was scraped healthy twice (rate()
	// needs two samples).
	waitFor(t, ctxFor(t, 60*time.Second), "prometheus to scrape every target", func() (bool, string) {
		select {
		case <-exited:
			t.Fatalf("prometheus exited:\n%s", logs.String())
		default:
		}
		var res struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		}
		err := p.get(context.Background(), "/api/v1/query", url.Values{"query": {`count_over_time(up[1m]) >= 2 and up == 1`}}, &res)
		if err != nil {
			return false, err.Error()
		}
		return len(res.Result) == len(targets), fmt.Sprintf("%d of %d targets scraped twice", len(res.Result), len(targets))
	})
	return p
}

// A real Prometheus scrapes a running edge and core; every expression of the
// dashboard and of the alert rules evaluates, and each metric selector in them
// matches series: a renamed metric, a label value never exported, or a typo fails
// here rather than on an operator's empty panel or an alert that can never fire.
func TestDashboardAndAlertsMatchRealSeries(t *testing.T) {
	ctx := ctxFor(t, 3*time.Minute)
	s := startAll(t, harness.PairOpts{})
	m := s.minions(t, harness.MinionOpts{Count: 3, IDPrefix: "prom"})
	if err := harness.WarmUp(ctx, s.master, m); err != nil {
		t.Fatal(err)
	}
	root := harness.ModuleRoot()
	rules := filepath.Join(root, "deploy", "prometheus", "alerts.yml")
	p := startPrometheus(t, rules, map[string]string{"salt-broker-edge": s.pair.Edge.Admin, "salt-broker-core": s.pair.Core.Admin})

	exprs := append(dashboardExprs(t, filepath.Join(root, "deploy", "grafana", "salt-broker.json")), ruleExprs(t, rules)...)
	if len(exprs) < 40 {
		t.Fatalf("only %d expressions found in the dashboard and rules", len(exprs))
	}
	checked := map[string]bool{}
	for _, e := range exprs {
		q := grafanaVars.Replace(e.expr)
		var res json.RawMessage
		if err := p.get(ctx, "/api/v1/query", url.Values{"query": {q}}, &res); err != nil {
			t.Errorf("%s: %q does not evaluate: %v", e.where, q, err)
			continue
		}
		sels := selectorRE.FindAllString(q, -1)
		if len(sels) == 0 {
			t.Errorf("%s: %q names no salt_broker_ metric", e.where, q)
		}
		for _, sel := range sels {
			if checked[sel] {
				continue
			}
			checked[sel] = true
			n, err := p.series(ctx, sel)
			if err != nil {
				t.Errorf("%s: series %s: %v", e.where, sel, err)
			} else if n == 0 {
				t.Errorf("%s: %s matches no series scraped from the edge or core", e.where, sel)
			}
		}
	}
	t.Logf("%d expressions, %d distinct selectors, each with series", len(exprs), len(checked))

	// Every rule evaluates without error inside Prometheus too.
	var rg struct {
		Groups []struct {
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"rules"`
		} `json:"groups"`
	}
	waitFor(t, ctx, "every rule evaluated", func() (bool, string) {
		if err := p.get(ctx, "/api/v1/rules", url.Values{}, &rg); err != nil {
			return false, err.Error()
		}
		for _, g := range rg.Groups {
			for _, r := range g.Rules {
				if r.Health != "ok" {
					return false, r.Name + ": " + r.Health + " " + r.LastError
				}
			}
		}
		return len(rg.Groups) > 0, "no rule groups"
	})
	// The build is labelled, quic-go's version included (read from the binary).
	for _, sel := range []string{`salt_broker_build_info{job="salt-broker-edge",quic_go=~"v.+",goversion=~"go.+"}`,
		`salt_broker_build_info{job="salt-broker-core",quic_go=~"v.+"}`} {
		if n, err := p.series(ctx, sel); err != nil || n != 1 {
			t.Errorf("%s: %d series, %v", sel, n, err)
		}
	}
}
