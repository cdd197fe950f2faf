// Package testlog holds what tests of several packages share to read a logger's
// output: a buffer that slog handlers may write to from many goroutines while the
// test reads it.
package testlog

import (
	"bytes"
	"sync"
)

// Buffer collects log lines; safe for concurrent writes and reads.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
