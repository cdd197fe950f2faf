package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestAllowOncePerPeriodPerKind(t *testing.T) {
	var l Limiter
	t0 := time.Unix(100, 0)
	if ok, n := l.Allow("a", t0); !ok || n != 0 {
		t.Fatalf("first line: %v %d", ok, n)
	}
	for i := range 5 {
		if ok, _ := l.Allow("a", t0.Add(time.Duration(i)*100*time.Millisecond)); ok {
			t.Fatalf("line %d within the second let through", i)
		}
	}
	if ok, _ := l.Allow("b", t0); !ok {
		t.Fatal("another kind was held back by the first")
	}
	if ok, n := l.Allow("a", t0.Add(time.Second)); !ok || n != 5 {
		t.Fatalf("after the period: %v, left out %d, want 5", ok, n)
	}
	if ok, n := l.Allow("a", t0.Add(3*time.Second)); !ok || n != 0 {
		t.Fatalf("the count starts again: %v %d", ok, n)
	}
}

func TestLogSaysHowManyWereLeftOut(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	l := Limiter{Every: 50 * time.Millisecond}
	for range 10 {
		l.Log(log, slog.LevelWarn, "", "refused")
	}
	time.Sleep(60 * time.Millisecond)
	l.Log(log, slog.LevelWarn, "", "refused")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "similar_not_logged=9") {
		t.Fatalf("lines:\n%s", buf.String())
	}
	l.Log(log, slog.LevelDebug, "", "below the handler's level")
	if strings.Contains(buf.String(), "below") {
		t.Error("a disabled level was written")
	}
}
