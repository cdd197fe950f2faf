package core

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Small replies bypass the connection's gate even when large ones fill it; a large
// one waits its turn (counted) and gives up, holding nothing, when its context ends.
func TestAdmitReplySmallBypassesTheGate(t *testing.T) {
	c := &Core{cfg: Config{BulkInFlightBytes: 1 << 20}}
	c.metrics = newMetrics(c, nil)
	e := &edgeConn{c: c}
	ctx := context.Background()

	big, err := e.admitReply(ctx, 2<<20) // above the budget: admitted alone
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{100, bulkThreshold} {
		rel, err := e.admitReply(ctx, n)
		if err != nil {
			t.Fatalf("a %d-byte reply beside a full gate: %v", n, err)
		}
		rel()
	}
	if st := e.bulk.Stats(); st.Holders != 1 || st.Waiting != 0 {
		t.Fatalf("small replies touched the gate: %+v", st)
	}
	if n := testutil.ToFloat64(c.metrics.bulkWaits); n != 0 {
		t.Fatalf("%v waits counted for replies that never waited", n)
	}

	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := e.admitReply(wctx, bulkThreshold+1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a large reply behind a full gate: %v, want it to wait until its context ends", err)
	}
	if n := testutil.ToFloat64(c.metrics.bulkWaits); n != 1 {
		t.Fatalf("bulk waits counted: %v, want 1", n)
	}
	if st := e.bulk.Stats(); st.Holders != 1 || st.InFlight != 2<<20 || st.Waiting != 0 {
		t.Fatalf("after the cancelled wait: %+v", st)
	}
	big()
	if st := e.bulk.Stats(); st.InFlight != 0 || st.Holders != 0 {
		t.Fatalf("after release: %+v", st)
	}
}
