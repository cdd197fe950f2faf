package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The demo runs edge, core, tunnel and zmtp in this process, so goleak here checks
// that all of them stop every goroutine they start.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// zmq4 v0.17.0 never stops its PUB writer goroutine on Close
		// (dependency-pitfalls.md, zmq4 item 9); the demo's simulated master is a zmq4 PUB.
		goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run"),
	)
}

func TestDemoEverythingArrives(t *testing.T) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := Run(ctx, Options{Minions: 8, Jobs: 30, Out: &out}); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "240 of 240 arrived, 0 duplicated") {
		t.Errorf("summary:\n%s", out.String())
	}
}
