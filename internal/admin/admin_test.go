package admin

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve starts an endpoint on addr, serving until the test ends.
func serve(t *testing.T, addr string, pprofOn bool) (*Server, error) {
	t.Helper()
	s, err := Listen(addr, prometheus.NewRegistry(), func() bool { return true }, func() any { return map[string]string{"role": "test"} }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if pprofOn {
		if err := s.EnablePprof(); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s, nil
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// --pprof serves the profiler on loopback, and only when asked.
func TestPprof(t *testing.T) {
	off, err := serve(t, "127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := get(t, "http://"+off.Addr().String()+"/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("without --pprof, /debug/pprof/ answered %d, want 404", code)
	}
	on, err := serve(t, "127.0.0.1:0", true)
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + on.Addr().String()
	if code, body := get(t, base+"/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d %.200s", code, body)
	}
	if code, body := get(t, base+"/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile") {
		t.Errorf("/debug/pprof/goroutine: %d %.200s", code, body)
	}
	if code, _ := get(t, base+"/debug/pprof/profile?seconds=1"); code != http.StatusOK {
		t.Errorf("/debug/pprof/profile: %d", code)
	}
	// What `go tool pprof` asks for by default must fit the write timeout.
	if on.srv.WriteTimeout <= 30*time.Second {
		t.Errorf("write timeout %v: a 30 s CPU profile would be refused", on.srv.WriteTimeout)
	}
}

// An endpoint reachable from the network never serves the profiler.
func TestPprofRefusedOffLoopback(t *testing.T) {
	_, err := serve(t, "0.0.0.0:0", true)
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("--pprof on 0.0.0.0: %v, want refused", err)
	}
}
