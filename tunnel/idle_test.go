package tunnel

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// pacedReader drains c at step bytes per pause until it has read stopAfter bytes
// (or everything, with stopAfter < 0), then reads nothing more; it returns what it read.
func pacedReader(c net.Conn, step int, pause time.Duration, stopAfter int) (got *bytes.Buffer, wait func()) {
	got = &bytes.Buffer{}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, step)
		for stopAfter < 0 || got.Len() < stopAfter {
			want := step
			if stopAfter >= 0 {
				want = min(step, stopAfter-got.Len())
			}
			n, err := c.Read(buf[:want])
			got.Write(buf[:n])
			if err != nil {
				return
			}
			time.Sleep(pause)
		}
	})
	return got, wg.Wait
}

// A transfer that takes several idle timeouts in all but keeps moving is not cut:
// 4 MiB drained at 16 KiB per 10 ms (about 2.6 s) with a 1 s idle timeout.
func TestWriteIdleSlowButSteadyIsNotCut(t *testing.T) {
	w, r := net.Pipe()
	defer w.Close()
	defer r.Close()
	p := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)
	const idle = time.Second
	got, wait := pacedReader(r, 16<<10, 10*time.Millisecond, len(p))
	start := time.Now()
	n, err := WriteIdle(w, p, idle)
	took := time.Since(start)
	wait()
	if err != nil || n != len(p) {
		t.Fatalf("WriteIdle: %d of %d bytes, %v", n, len(p), err)
	}
	if !bytes.Equal(got.Bytes(), p) {
		t.Fatalf("the reader got %d bytes, not what was written", got.Len())
	}
	if took <= idle {
		t.Fatalf("the transfer took %s, within one idle timeout: the test proved nothing", took)
	}
	t.Logf("4 MiB written in %s with a %s idle deadline", took.Round(time.Millisecond), idle)
}

// A transfer that stops moving is cut, with the bytes that went through counted.
func TestWriteIdleCutsNoProgress(t *testing.T) {
	w, r := net.Pipe()
	defer w.Close()
	defer r.Close()
	p := make([]byte, 4<<20)
	const stopAfter = 200 << 10
	_, wait := pacedReader(r, 16<<10, 0, stopAfter)
	start := time.Now()
	n, err := WriteIdle(w, p, 300*time.Millisecond)
	wait()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteIdle on a stalled reader: %v, want a deadline error", err)
	}
	if n != stopAfter {
		t.Fatalf("WriteIdle reported %d bytes written, the reader took %d", n, stopAfter)
	}
	t.Logf("cut %s after start, %d bytes through", time.Since(start).Round(time.Millisecond), n)
}

// pacedWriter writes total bytes to c, step at a time with a pause between, after
// an initial delay; then it stops writing but keeps c open.
func pacedWriter(c net.Conn, total, step int, pause, delay time.Duration) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() {
		time.Sleep(delay)
		b := make([]byte, step)
		for sent := 0; sent < total; sent += step {
			if _, err := c.Write(b[:min(step, total-sent)]); err != nil {
				return
			}
			time.Sleep(pause)
		}
	})
	return wg.Wait
}

func TestIdleReader(t *testing.T) {
	const idle = 500 * time.Millisecond
	t.Run("slow but steady", func(t *testing.T) {
		w, r := net.Pipe()
		defer w.Close()
		defer r.Close()
		const total = 2 << 20 // 128 writes 10 ms apart: well over the idle timeout in all
		wait := pacedWriter(w, total, 16<<10, 10*time.Millisecond, 0)
		defer wait()
		start := time.Now()
		n, err := io.ReadFull(NewIdleReader(r, idle, false), make([]byte, total))
		if err != nil {
			t.Fatalf("read %d of %d: %v", n, total, err)
		}
		if took := time.Since(start); took <= idle {
			t.Fatalf("the transfer took %s, within one idle timeout: the test proved nothing", took)
		}
	})
	t.Run("stalled", func(t *testing.T) {
		w, r := net.Pipe()
		defer w.Close()
		defer r.Close()
		wait := pacedWriter(w, 100<<10, 16<<10, 0, 0)
		defer wait()
		n, err := io.ReadFull(NewIdleReader(r, idle, false), make([]byte, 1<<20))
		if !errors.Is(err, os.ErrDeadlineExceeded) || n != 100<<10 {
			t.Fatalf("read %d bytes, %v; want 100 KiB and a deadline error", n, err)
		}
	})
	t.Run("first byte waited for without a deadline", func(t *testing.T) {
		w, r := net.Pipe()
		defer w.Close()
		defer r.Close()
		// The first byte comes three idle timeouts late; after 64 KiB the writer stops.
		wait := pacedWriter(w, 64<<10, 16<<10, 0, 3*idle)
		defer wait()
		n, err := io.ReadFull(NewIdleReader(r, idle, true), make([]byte, 1<<20))
		if !errors.Is(err, os.ErrDeadlineExceeded) || n != 64<<10 {
			t.Fatalf("read %d bytes, %v; want 64 KiB, then a deadline error", n, err)
		}
	})
}
