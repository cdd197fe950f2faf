package core

import (
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
)

// edgeSamples returns the per-edge samples of one metric, by "edge" or "edge/result".
func (l *reqLab) edgeSamples(name string) map[string]float64 {
	l.t.Helper()
	mfs, err := l.reg.Gather()
	if err != nil {
		l.t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			key := ""
			for _, p := range m.GetLabel() {
				if key != "" {
					key += "/"
				}
				key += p.GetValue()
			}
			v := m.GetGauge().GetValue()
			if c := m.GetCounter(); c != nil {
				v = c.GetValue()
			}
			out[key] = v
		}
	}
	return out
}

// The core exports each edge's state and requests by its certificate name, every
// result at 0 from its first connection; once the edge is gone, edge_up reads 0
// and the series stay for edgeSeriesKeep, then are deleted.
func TestPerEdgeSeries(t *testing.T) {
	l := newReqLab(t, Config{Table: TableLimits{Entries: 11, TTL: time.Minute}})
	var name string // the certificate name the core saw
	for n := range l.edgeSamples("salt_broker_core_edge_up") {
		name = n
	}
	if got := l.edgeSamples("salt_broker_core_edge_up"); len(got) != 1 || got[name] != 1 {
		t.Fatalf("edge_up with one edge connected: %v", got)
	}
	for _, r := range edgeRequestResults {
		if _, ok := l.edgeSamples("salt_broker_core_edge_requests_total")[name+"/"+r]; !ok {
			t.Errorf("edge_requests_total{result=%q} not declared at connect", r)
		}
	}
	if got := l.edgeSamples("salt_broker_core_edge_answers_total"); len(got) != len(edgeAnswerResults) {
		t.Errorf("edge_answers_total at connect: %v", got)
	}
	for _, m := range []string{"salt_broker_core_edge_connections", "salt_broker_core_edge_publication_lag", "salt_broker_core_edge_rtt_seconds"} {
		if _, ok := l.edgeSamples(m)[name]; !ok {
			t.Errorf("%s: no series for the connected edge", m)
		}
	}

	// Two requests, cancelled before the master (there is none) takes them: both
	// accepted and both answered with a refusal.
	for id := uint64(1); id <= 2; id++ {
		ch := l.request(id, 0, "x")
		waitFor(t, 10*time.Second, "the request reaching the table", func() bool {
			_, entries, _, _ := l.c.table.snapshot()
			return entries == int(id)
		})
		if got, err := l.cancel(id); err != nil || got != wire.CancelDone {
			t.Fatalf("cancel %d: %d %v", id, got, err)
		}
		expectRefused(t, ch, id, wire.RefusedCancelled)
	}
	if got := l.edgeSamples("salt_broker_core_edge_requests_total")[name+"/accepted"]; got != 2 {
		t.Errorf("edge_requests_total{result=accepted} = %v, want 2", got)
	}
	waitFor(t, 10*time.Second, "both refusals counted", func() bool {
		return l.edgeSamples("salt_broker_core_edge_answers_total")[name+"/refused"] == 2
	})

	_ = l.sess.CloseWithError("test: the edge goes")
	waitFor(t, 10*time.Second, "edge_up to read 0 once the edge is gone", func() bool {
		got, ok := l.edgeSamples("salt_broker_core_edge_up")[name]
		return ok && got == 0
	})
	if got := l.edgeSamples("salt_broker_core_edge_requests_total")[name+"/accepted"]; got != 2 {
		t.Errorf("a gone edge's counters must stay until deleted: accepted = %v", got)
	}
	l.advance(edgeSeriesKeep + time.Minute)
	for _, m := range []string{"salt_broker_core_edge_up", "salt_broker_core_edge_requests_total", "salt_broker_core_edge_publication_lag"} {
		if got := l.edgeSamples(m); len(got) != 0 {
			t.Errorf("%s after %v gone: %v, want deleted", m, edgeSeriesKeep, got)
		}
	}
}

// At most max edges keep series: the ones gone longest are deleted first, never a
// connected one.
func TestEdgeSeriesBounded(t *testing.T) {
	s := newEdgeSeriesSet()
	s.max = 3
	now := time.Unix(1_000_000, 0)
	live := s.attach("live", now)
	for i, n := range []string{"a", "b", "c"} {
		es := s.attach(n, now)
		s.detach(es, 0, now.Add(time.Duration(i)*time.Second))
	}
	s.attach("d", now.Add(time.Minute)) // 5 edges: a and b, gone longest, go
	if _, ok := s.byName["live"]; !ok || live.conns != 1 {
		t.Fatal("a connected edge's series was deleted")
	}
	for n, want := range map[string]bool{"a": false, "b": false, "c": true, "d": true} {
		if _, ok := s.byName[n]; ok != want {
			t.Errorf("edge %s kept: %v, want %v", n, ok, want)
		}
	}
}
