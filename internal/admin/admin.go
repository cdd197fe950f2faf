// Package admin serves the operator's HTTP endpoints of edge and core on a loopback
// address: /metrics (Prometheus), /healthz (the process runs), /readyz (the edge:
// its tunnel is up; the core: both of its sockets are connected to the master) and
// /status (the state `broker status` prints, as JSON); on loopback only, the
// edge's POST /debug/close-connection?conn=N and, with --pprof, Go's profiler at
// /debug/pprof/.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is the admin endpoint.
type Server struct {
	srv *http.Server
	mux *http.ServeMux
	ln  net.Listener
	log *slog.Logger
}

// Listen binds addr. ready reports whether the process can serve (see the package
// comment); status returns what /status shows.
func Listen(addr string, gatherer prometheus.Gatherer, ready func() bool, status func() any, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready: see /status\n", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(status())
	})
	s := &Server{
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute},
		mux: mux,
		ln:  ln,
		log: log,
	}
	return s, nil
}

// Loopback reports whether the endpoint is bound to a loopback address only.
func (s *Server) Loopback() bool {
	a, ok := s.ln.Addr().(*net.TCPAddr)
	return ok && a.IP.IsLoopback()
}

// HandleDebug serves h at /debug/<name>, for POST only, if the endpoint is bound
// to loopback: debug endpoints act (close a connection...), so one must not be
// reachable from the network because an operator moved --admin to serve
// /metrics to a scraper. Off loopback it is not served, and that is logged.
func (s *Server) HandleDebug(name string, h http.HandlerFunc) {
	path := "/debug/" + name
	if !s.Loopback() {
		s.log.Warn("admin debug endpoint not served: the admin address is not loopback", "path", path, "admin", s.ln.Addr())
		return
	}
	s.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, path+" takes POST\n", http.StatusMethodNotAllowed)
			return
		}
		h(w, r)
	})
}

// pprofWriteTimeout replaces the endpoint's write timeout once the profiler is
// served: a CPU profile or trace streams for ?seconds= (30 by default, which
// `go tool pprof` asks for), and net/http/pprof refuses any that would outlast the
// server's WriteTimeout.
const pprofWriteTimeout = 2 * time.Minute

// EnablePprof serves Go's profiler (net/http/pprof) under /debug/pprof/. It
// refuses an endpoint not bound to loopback: profiles expose the process's
// internals (its command line, memory, goroutines), the endpoint has no
// authentication, and a CPU profile costs the service while it runs. Call it
// before Serve.
func (s *Server) EnablePprof() error {
	if !s.Loopback() {
		return fmt.Errorf("--pprof needs a loopback --admin address (127.0.0.1 or [::1]), not %s: the profiler exposes the process's internals without authentication", s.ln.Addr())
	}
	s.mux.HandleFunc("/debug/pprof/", pprof.Index) // heap, goroutine, allocs, block, mutex, threadcreate by name
	s.mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	s.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	s.srv.WriteTimeout = pprofWriteTimeout
	s.log.Info("profiler served on the admin endpoint", "url", "http://"+s.ln.Addr().String()+"/debug/pprof/")
	return nil
}

// CloseConnection is the handler of POST /debug/close-connection?conn=N: close
// ends connection N now (false: there is none) — to see a failover happen.
func CloseConnection(close func(conn uint32) bool, log *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseUint(r.URL.Query().Get("conn"), 10, 32)
		if err != nil {
			http.Error(w, "want ?conn=N, a connection number from /status\n", http.StatusBadRequest)
			return
		}
		if !close(uint32(n)) {
			http.Error(w, fmt.Sprintf("no connection %d (see /status)\n", n), http.StatusNotFound)
			return
		}
		log.Warn("connection to the core closed by the operator", "conn", n, "remote", r.RemoteAddr)
		_, _ = fmt.Fprintf(w, "connection %d closed\n", n)
	}
}

// Close releases the endpoint's address without serving: for a caller that
// gives up between Listen and Serve (EnablePprof refused the address).
func (s *Server) Close() error { return s.ln.Close() }

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve runs until ctx ends.
func (s *Server) Serve(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin endpoint stopped", "err", err)
		}
	}()
	<-ctx.Done()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(shutdownCtx)
	<-done
}
