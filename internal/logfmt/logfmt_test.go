package logfmt

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"
)

// A JSON line through ReplaceAttr: addresses as strings, durations as Go duration
// strings, 64-bit IDs as decimal strings that keep every digit, counts as numbers,
// inside groups too; the built-in keys untouched.
func TestJSONLinesReadableByJSONTools(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, JSONOptions(slog.LevelInfo)))
	const epoch uint64 = 0xfedcba9876543211 // > 2^53: a float64 would round it
	var nilAddr *net.UDPAddr
	log.Info("connected", "remote", &net.UDPAddr{IP: net.ParseIP("10.0.0.1"), Port: 443},
		"tcp", net.Addr(&net.TCPAddr{IP: net.ParseIP("::1"), Port: 4506}), "none", nilAddr,
		"rtt", 1500*time.Millisecond, "outage", 2*time.Minute, "epoch", epoch, "seq", uint64(7),
		"count", 42, "big", int64(1)<<60, "neg", -3, "err", errors.New("boom"),
		slog.Group("conn", "remote", &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 1}, "idle", time.Second))

	var got map[string]any
	d := json.NewDecoder(&buf)
	d.UseNumber()
	if err := d.Decode(&got); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	want := map[string]any{
		"level": "INFO", "msg": "connected",
		"remote": "10.0.0.1:443", "tcp": "[::1]:4506", "none": "",
		"rtt": "1.5s", "outage": "2m0s", "epoch": "18364758544493064721", "seq": "7",
		"count": json.Number("42"), "big": "1152921504606846976", "neg": json.Number("-3"), "err": "boom",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %#v, want %#v", k, got[k], w)
		}
	}
	conn, _ := got["conn"].(map[string]any)
	if conn["remote"] != "127.0.0.1:1" || conn["idle"] != "1s" {
		t.Errorf("in a group: %#v", conn)
	}
	if _, err := time.Parse(time.RFC3339Nano, got["time"].(string)); err != nil {
		t.Errorf("time: %v", err)
	}
}
