// Package admin serves the operator's HTTP endpoints of edge and core on a loopback
// address: /metrics (Prometheus), /healthz (the process runs), /readyz (the edge:
// its tunnel is up; the core: both of its sockets are connected to the master) and
// /status (the state `broker status` prints, as JSON); on loopback only, the
// edge's POST /debug/close-connection?conn=N.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
