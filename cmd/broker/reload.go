package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

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
			log.Info("reloading certificates and edge lists", "signal", s.String())
			if err := reload(); err != nil {
				log.Error("reload failed: still running with the previous certificates and edge lists", "err", err,
					"hint", "fix the file named and send SIGHUP again ('broker certs show FILE' says what a file holds)")
				continue
			}
			log.Info("reload done")
		}
	}
}
