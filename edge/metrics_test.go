package edge

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Every labelled series exists, at 0, before its first event: an alert on
// absent() or on a ratio (dropped / received) needs it from the start.
func TestLabelledSeriesDeclaredAtStart(t *testing.T) {
	m := newMetrics(&Edge{}, nil)
	for name, c := range map[string]struct {
		c    prometheus.Collector
		want []string
	}{
		"requests_total":                   {m.requestsIn, requestClasses},
		"replies_total":                    {m.replies, replyResults},
		"requests_dropped_total":           {m.dropped, dropCauses},
		"minion_retries_after_reply_total": {m.retriesAfterReply, retryAfterReplyAction},
		"tunnel_transport_changes_total":   {m.transportChanges, transports},
		"tunnel_pool_changes_total":        {m.poolChanges, poolChangeReasons},
		"tunnel_transport":                 {m.transport.vec, transports},
	} {
		got := labelValues(t, c.c)
		for _, v := range c.want {
			if !got[v] {
				t.Errorf("%s: no series for %q at start (have %v)", name, v, got)
			}
		}
	}
	// The transport not in use reads 0, not absent, after a connection.
	m.transport.Reset()
	m.transport.WithLabelValues("tcp").Set(1)
	if got := labelValues(t, m.transport.vec); !got["quic"] || !got["tcp"] {
		t.Errorf("tunnel_transport after a TCP connection: %v", got)
	}
}

// labelValues collects c and returns the value of each series' one label.
func labelValues(t *testing.T, c prometheus.Collector) map[string]bool {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	go func() { c.Collect(ch); close(ch) }()
	got := map[string]bool{}
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		for _, l := range pb.GetLabel() {
			got[l.GetValue()] = true
		}
	}
	return got
}
