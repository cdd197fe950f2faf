package core

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Per-edge series are labelled by the edge's certificate name (edge=), the one
// name the core has verified. Their number is bounded: an edge's series stay
// edgeSeriesKeep after its last connection closed (edge_up reads 0 meanwhile, for
// an alert to fire and a dashboard to show it), then are deleted; past
// edgeSeriesMax edges, the ones gone longest are deleted first. Connected edges are
// never deleted.
const (
	edgeSeriesKeep = 24 * time.Hour
	edgeSeriesMax  = 1000
)

// Outcomes counted per edge; each is declared at 0 when the edge first connects.
var (
	edgeRequestResults = []string{"accepted", "resent", "busy", "too_large"}
	edgeAnswerResults  = []string{answerReply, answerRefused}
)

const (
	answerReply   = "reply"   // the master's reply (or the cached one) was written to the edge
	answerRefused = "refused" // refused after it was accepted: stale, the master's timeout, a send error, the core stopping
)

// edgeSeries counts one edge's requests across its connections and sessions.
type edgeSeries struct {
	name     string
	requests [4]atomic.Uint64 // by edgeRequestResults
	answers  [2]atomic.Uint64 // by edgeAnswerResults

	// guarded by edgeSeriesSet.mu
	conns  int
	goneAt time.Time // when its last connection closed; zero while one is open
	cursor uint64    // the highest cursor its connections acknowledged, kept once gone
}

func (s *edgeSeries) request(result string) {
	for i, r := range edgeRequestResults {
		if r == result {
			s.requests[i].Add(1)
		}
	}
}

func (s *edgeSeries) answered(result string) {
	for i, r := range edgeAnswerResults {
		if r == result {
			s.answers[i].Add(1)
		}
	}
}

// edgeSeriesSet holds the per-edge series. Its mutex is a leaf: nothing else is
// locked while it is held (the collector copies the connections under c.mu first).
type edgeSeriesSet struct {
	mu     sync.Mutex
	byName map[string]*edgeSeries
	keep   time.Duration
	max    int
}

func newEdgeSeriesSet() *edgeSeriesSet {
	return &edgeSeriesSet{byName: map[string]*edgeSeries{}, keep: edgeSeriesKeep, max: edgeSeriesMax}
}

// attach counts a connection of edge name open and returns its series.
func (s *edgeSeriesSet) attach(name string, now time.Time) *edgeSeries {
	s.mu.Lock()
	defer s.mu.Unlock()
	es := s.byName[name]
	if es == nil {
		es = &edgeSeries{name: name}
		s.byName[name] = es
	}
	es.conns++
	es.goneAt = time.Time{}
	s.pruneLocked(now)
	return es
}

// detach counts one of its connections closed, remembering the cursor it had.
func (s *edgeSeriesSet) detach(es *edgeSeries, cursor uint64, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	es.conns--
	es.cursor = max(es.cursor, cursor)
	if es.conns == 0 {
		es.goneAt = now
	}
}

// pruneLocked deletes the series of edges gone past keep, then the longest gone
// until at most max remain.
func (s *edgeSeriesSet) pruneLocked(now time.Time) {
	for name, es := range s.byName {
		if es.conns == 0 && now.Sub(es.goneAt) > s.keep {
			delete(s.byName, name)
		}
	}
	for len(s.byName) > s.max {
		var oldest *edgeSeries
		for _, es := range s.byName {
			if es.conns == 0 && (oldest == nil || es.goneAt.Before(oldest.goneAt)) {
				oldest = es
			}
		}
		if oldest == nil {
			return // all connected: bounded by the connections themselves
		}
		delete(s.byName, oldest.name)
	}
}

// edgeCollector exports the per-edge series at scrape time.
type edgeCollector struct {
	c                                      *Core
	set                                    *edgeSeriesSet
	up, conns, lag, rtt, requests, answers *prometheus.Desc
}

func newEdgeCollector(c *Core, set *edgeSeriesSet) *edgeCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("salt_broker_core_edge_"+name, help, append([]string{"edge"}, labels...), nil)
	}
	return &edgeCollector{c: c, set: set,
		up:       d("up", "1 while the edge (by certificate name) has a connection open; 0 once its last closed, for 24 h, after which its series are deleted."),
		conns:    d("connections", "Connections open from the edge (its pool)."),
		lag:      d("publication_lag", "Publications the core numbered that the edge has not acknowledged (newest sequence minus the edge's cursor); it grows while the edge is gone."),
		rtt:      d("rtt_seconds", "Smoothed round trip time to the edge, the smallest of its connections'."),
		requests: d("requests_total", "Requests received from the edge, by result (accepted, resent, busy, too_large).", "result"),
		answers:  d("answers_total", "Requests the core answered the edge, by result: reply, or refused after acceptance (stale, the master's timeout, a send error, the core stopping).", "result"),
	}
}

func (ec *edgeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{ec.up, ec.conns, ec.lag, ec.rtt, ec.requests, ec.answers} {
		ch <- d
	}
}

type liveEdge struct {
	cursor uint64
	rtt    time.Duration
}

func (ec *edgeCollector) Collect(ch chan<- prometheus.Metric) {
	c := ec.c
	head := c.ring.Head()
	live := map[string]liveEdge{}
	c.mu.Lock()
	for e := range c.edges {
		name := e.sess.PeerName()
		l, seen := live[name]
		l.cursor = max(l.cursor, e.cursor.Load())
		if rtt := e.sess.Stats().SmoothedRTT; rtt > 0 && (!seen || l.rtt == 0 || rtt < l.rtt) {
			l.rtt = rtt
		}
		live[name] = l
	}
	c.mu.Unlock()

	s := ec.set
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(c.table.now())
	for name, es := range s.byName {
		up, cursor := 0.0, es.cursor
		if es.conns > 0 {
			up = 1
		}
		if l, ok := live[name]; ok {
			cursor = max(cursor, l.cursor)
			es.cursor = cursor
			ch <- prometheus.MustNewConstMetric(ec.rtt, prometheus.GaugeValue, l.rtt.Seconds(), name)
		}
		var lag uint64
		if head > cursor {
			lag = head - cursor
		}
		ch <- prometheus.MustNewConstMetric(ec.up, prometheus.GaugeValue, up, name)
		ch <- prometheus.MustNewConstMetric(ec.conns, prometheus.GaugeValue, float64(es.conns), name)
		ch <- prometheus.MustNewConstMetric(ec.lag, prometheus.GaugeValue, float64(lag), name)
		for i, r := range edgeRequestResults {
			ch <- prometheus.MustNewConstMetric(ec.requests, prometheus.CounterValue, float64(es.requests[i].Load()), name, r)
		}
		for i, r := range edgeAnswerResults {
			ch <- prometheus.MustNewConstMetric(ec.answers, prometheus.CounterValue, float64(es.answers[i].Load()), name, r)
		}
	}
}
