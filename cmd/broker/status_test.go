package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// statusServer answers /status with body.
func statusServer(t *testing.T, body string) string {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, body)
	}))
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

// `broker status` prints a table by default and the JSON with --json, and its exit
// code says whether the edge or core can serve: 0 up, 3 down (tunnel or master),
// 1 no status at all.
func TestStatusTableJSONAndExitCodes(t *testing.T) {
	const edgeUp = `{"role":"edge","core":"core.example.net:443","connected":true,"transport":"quic","rtt_ms":12.5,"core_epoch":1,"pub_cursor":42,
"pending_requests":3,"minions_subscribed":120,"minion_req_sockets":118,"pool_cap":4,
"connections":[{"conn":0,"transport":"quic","anchor":true,"publications":true,"ping_rtt_ms":12.5,"smoothed_rtt_ms":12,"min_rtt_ms":10,
"congestion_window_bytes":1048576,"loss_ratio":0.01,"requests_in_flight":3,"request_bytes_in_flight":2048}]}`
	const edgeDown = `{"role":"edge","core":"core.example.net:443","connected":false,"pool_cap":1,"connections":[],
"down_since":"2026-12-02T10:00:00Z","last_error":"dial core.example.net:443: connection refused"}`
	const coreUp = `{"role":"core","epoch":255,"head_seq":900,"ring_messages":900,"ring_bytes":3145728,"ring_oldest_age_s":61,"requests_at_master":2,
"dedup_entries":40,"master_sub_connected":true,"master_dealer_connected":true,
"edges":[{"name":"edge-paris","edge_name":"paris","conn":0,"remote":"192.0.2.7:50000","transport":"quic","rtt_ms":80.2,"pub_cursor":890,"pub_lag":10}]}`
	const coreNoDealer = `{"role":"core","epoch":255,"master_sub_connected":true,"master_dealer_connected":false,"edges":[]}`

	for _, tc := range []struct {
		name, body string
		json       bool
		code       int
		stdout     []string // each on stdout
		stderr     string   // on stderr ("" : nothing)
	}{
		{"edge up", edgeUp, false, 0, []string{"tunnel up (quic, rtt 12.5 ms)", "120 subscribed", "anchor,publications", "1.0 MiB", "1.00%"}, ""},
		{"edge down", edgeDown, false, exitDown, []string{"tunnel DOWN", "2026-12-02T10:00:00Z", "connection refused"},
			"the tunnel to the core core.example.net:443 is down since 2026-12-02T10:00:00Z: dial core.example.net:443: connection refused"},
		{"edge down, json", edgeDown, true, exitDown, []string{`"connected":false`, `"last_error"`}, "is down"},
		{"core up", coreUp, false, 0, []string{"master sub connected, dealer connected", "900 publications, 3.0 MiB", "oldest 1m1s", "edge-paris", "paris", "192.0.2.7:50000"}, ""},
		{"core up, json", coreUp, true, 0, []string{`"role":"core"`, `"pub_lag":10`}, ""},
		{"core without dealer", coreNoDealer, false, exitDown, []string{"dealer DOWN"}, "not connected to the master: dealer (requests)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"status", "--admin", statusServer(t, tc.body)}
			if tc.json {
				args = append(args, "--json")
			}
			r := broker(t, nil, args...)
			if r.code != tc.code {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tc.code, r.stdout, r.stderr)
			}
			for _, want := range tc.stdout {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
				}
			}
			if tc.json && !strings.HasPrefix(r.stdout, "{") {
				t.Errorf("--json printed something else than the JSON:\n%s", r.stdout)
			}
			if tc.stderr == "" && r.stderr != "" || !strings.Contains(r.stderr, tc.stderr) || strings.Count(r.stderr, "\n") > 1 {
				t.Errorf("stderr %q, want one line holding %q", r.stderr, tc.stderr)
			}
		})
	}
	// JSON that is not an edge's or core's status is no status.
	r := broker(t, nil, "status", "--admin", statusServer(t, `{"name":"edge1"}`))
	checkOneLine(t, r, exitFailure, "not the status of an edge or core")
	// --help documents the exit codes.
	if r := broker(t, nil, "status", "--help"); !strings.Contains(r.stdout, "3  down") || !strings.Contains(r.stdout, "--json") {
		t.Errorf("status --help does not document the exit codes and --json:\n%s", r.stdout)
	}
}
