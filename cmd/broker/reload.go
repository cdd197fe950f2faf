package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/salt-broker/salt-broker/certs"
)

// withCertificates wraps a service's run: beside it, the store's daily expiry
// warning (certs.Store.WatchExpiry) and the SIGHUP reload loop, which both end
// when run returns, whether its context ended or it stopped by itself. SIGHUP is
// caught from the moment run starts (before that it would end the process).
func withCertificates(st *certs.Store, log *slog.Logger, reload func() error, run func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGHUP)
		defer signal.Stop(sig)
		ctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		defer wg.Wait() // after cancel: defers run last-first
		defer cancel()
		wg.Go(func() { st.WatchExpiry(ctx, log) })
		wg.Go(func() { reloadLoop(ctx, log, sig, reload) })
		return run(ctx)
	}
}

// reloadOnSIGHUP calls reload at each SIGHUP until ctx ends, and logs the outcome:
// a failed reload is an ERROR saying what failed, and the process goes on with
// what it had (never exits). Reloads run one at a time, in this goroutine; a
// SIGHUP arriving during one is kept (one, however many) and handled next.
func reloadOnSIGHUP(ctx context.Context, log *slog.Logger, reload func() error) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	defer signal.Stop(sig)
	reloadLoop(ctx, log, sig, reload)
}

// reloadLoop is reloadOnSIGHUP's loop on any channel of signals (tests send on it).
func reloadLoop(ctx context.Context, log *slog.Logger, sig <-chan os.Signal, reload func() error) {
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-sig:
			log.Info("reloading certificates (and, on a core, --allow-edge and --deny-edge)", "signal", s.String())
			if err := reload(); err != nil {
				log.Error("reload failed: still running with the previous certificates (and edge lists)", "err", err,
					"hint", "fix the file named and send SIGHUP again ('broker certs show FILE' says what a file holds)")
				continue
			}
			log.Info("reload done")
		}
	}
}
