// Package waitctx holds the waits that edge and core both need: sleeping for a
// while unless their context ends first, and waiting a bounded time for work in
// flight to finish.
package waitctx

import (
	"context"
	"time"
)

// Sleep waits d, or until ctx ends; it reports whether the whole d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Remaining polls remaining every 20 ms until it reports 0 or timeout has passed,
// and returns its last answer.
func Remaining(timeout time.Duration, remaining func() int) int {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		n := remaining()
		if n == 0 || time.Now().After(deadline) {
			return n
		}
		<-t.C
	}
}
