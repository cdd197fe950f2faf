// Package ratelog keeps a flood of one kind of event from becoming a flood of log
// lines: each kind of line is written at most once per period, and the next one
// written says how many like it were left out. Edge, core and the ZMTP server share
// it for everything a misbehaving peer or a long outage can repeat thousands of
// times a second.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Limiter lets each kind of line through at most once per Every. The zero value
// uses one second. It is safe for concurrent use.
type Limiter struct {
	Every time.Duration

	mu    sync.Mutex
	last  map[string]time.Time
	muted map[string]int
}

// Allow says whether a line of kind may be written now, and how many of that kind
// were left out since the last one written.
func (l *Limiter) Allow(kind string, now time.Time) (ok bool, leftOut int) {
	every := l.Every
	if every <= 0 {
		every = time.Second
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last, l.muted = make(map[string]time.Time), make(map[string]int)
	}
	if last, seen := l.last[kind]; seen && now.Sub(last) < every {
		l.muted[kind]++
		return false, 0
	}
	leftOut = l.muted[kind]
	l.last[kind] = now
	delete(l.muted, kind)
	return true, leftOut
}

// Log writes msg at level unless a line of the same kind was written less than
// Every ago; a line written after some were left out carries similar_not_logged.
// The kind is msg itself unless kind is given.
func (l *Limiter) Log(log *slog.Logger, level slog.Level, kind, msg string, args ...any) {
	if !log.Enabled(context.Background(), level) {
		return
	}
	if kind == "" {
		kind = msg
	}
	ok, n := l.Allow(kind, time.Now())
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "similar_not_logged", n)
	}
	log.Log(context.Background(), level, msg, args...)
}
