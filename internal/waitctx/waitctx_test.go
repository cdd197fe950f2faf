package waitctx

import (
	"context"
	"testing"
	"time"
)

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("a full sleep must report true")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Hour) || time.Since(start) > time.Second {
		t.Fatal("an ended context must cut the sleep short and report false")
	}
}

func TestRemaining(t *testing.T) {
	left := 3
	if n := Remaining(time.Second, func() int { left--; return left }); n != 0 || left != 0 {
		t.Fatalf("want to stop at 0, got %d (polled down to %d)", n, left)
	}
	start := time.Now()
	if n := Remaining(50*time.Millisecond, func() int { return 2 }); n != 2 {
		t.Fatalf("want the last count after the timeout, got %d", n)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > time.Second {
		t.Fatalf("a timeout of 50 ms took %s", d)
	}
}
