package core

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/salt-broker/salt-broker/internal/buildinfo"
)

// Results of salt_broker_core_requests_total, each declared at 0 at start.
var requestResults = []string{"accepted", "resent", "busy", "too_large", "expired"}

// metrics are the core's Prometheus collectors; names are documented in docs/operations.md.
type metrics struct {
	pubsIn, pubBytesIn, pubsOut, gapPubs prometheus.Counter
	ringHead                             prometheus.Gauge
	edges                                prometheus.Gauge
	requests                             *prometheus.CounterVec
	requestsToMaster, masterSendErrors   prometheus.Counter
	badReplies, lateReplies              prometheus.Counter
	protocolErrors                       *prometheus.CounterVec
	refusedEdges                         *prometheus.CounterVec
	sessionsForgotten                    prometheus.Counter
	oversize                             *prometheus.CounterVec

	perEdge *edgeSeriesSet // the per-edge series (edgeseries.go)

	bulkWaits          prometheus.Counter     // large replies that queued at their connection's gate
	repliesUnconfirmed *prometheus.CounterVec // replies whose TDone did not come, by reason
}

func newMetrics(c *Core, reg prometheus.Registerer) *metrics {
	const ns, sub = "salt_broker", "core"
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	m := &metrics{
		pubsIn:            counter("master_publications_total", "Publications read from the master's PUB socket."),
		pubBytesIn:        counter("master_publication_bytes_total", "Payload bytes of publications read from the master."),
		pubsOut:           counter("edge_publications_sent_total", "Publications written to edges (replays included)."),
		gapPubs:           counter("publication_gap_total", "Publications an edge missed because they left the replay ring first."),
		ringHead:          gauge("ring_head_sequence", "Sequence number of the newest publication."),
		edges:             gauge("edges_connected", "Edge connections open now."),
		requests:          prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total", Help: "Requests received from edges, by outcome: accepted, resent (a known ID; never sent to the master twice), busy (table or queue full), too_large; and expired: accepted but refused as stale, having waited for a slot at the master longer than its edge allowed; no_master: accepted but refused after waiting --master-timeout for a master the core has never reached."}, []string{"result"}),
		requestsToMaster:  counter("master_requests_total", "Requests sent to the master's ret port."),
		masterSendErrors:  counter("master_send_errors_total", "Requests zmq4 failed to queue towards the master."),
		badReplies:        counter("master_bad_replies_total", "Messages from the master's ret port without our routing frame."),
		lateReplies:       counter("master_late_replies_total", "Replies from the master after their request timed out or was forgotten."),
		protocolErrors:    prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "tunnel_protocol_errors_total", Help: "Tunnel streams closed because an edge broke the protocol, by kind."}, []string{"kind"}),
		sessionsForgotten: counter("edge_sessions_forgotten_total", "Idle edge sessions forgotten before --dedup-ttl to bound the table of sessions (an edge is minting sessions)."),
		refusedEdges:      prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "edges_refused_total", Help: "Edge connections refused at the hello, by reason: version (protocol mismatch), session_of_another_certificate (an edge session another certificate holds)."}, []string{"reason"}),
		oversize:          prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "oversize_total", Help: "Publications and replies from the master dropped for exceeding --max-message-size."}, []string{"kind"}),
	}
	masterUp := func(socket string) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "master_connected",
			Help: "1 while the core's socket (sub or dealer) has a TCP connection to the master.", ConstLabels: prometheus.Labels{"socket": socket}},
			func() float64 {
				l := c.master.Load()
				if l == nil {
					return 0
				}
				w := l.sub
				if socket == "dealer" {
					w = l.dealer
				}
				if w.connected() {
					return 1
				}
				return 0
			})
	}
	ringGauges := []prometheus.Collector{masterUp("sub"), masterUp("dealer"),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "ring_messages", Help: "Publications held in the replay ring."}, func() float64 { return float64(c.ring.Stats().Count) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "ring_bytes", Help: "Payload bytes held in the replay ring."}, func() float64 { return float64(c.ring.Stats().Bytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "ring_oldest_age_seconds", Help: "Age of the oldest publication in the replay ring: how long an outage it can still replay."}, func() float64 { return c.ring.Stats().OldestAge.Seconds() }),
		// The bounds themselves, so an alert can say "near its bound" without
		// repeating the flags: ring_messages / ring_limit_messages.
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "ring_limit_messages", Help: "The replay ring's bound in publications (--ring-count)."}, func() float64 { return float64(c.cfg.Ring.Count) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "ring_limit_bytes", Help: "The replay ring's bound in payload bytes (--ring-bytes)."}, func() float64 { return float64(c.cfg.Ring.Bytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "ring_limit_age_seconds", Help: "The replay ring's bound in age (--ring-age): the longest outage it replays when count and bytes allow."}, func() float64 { return c.cfg.Ring.Age.Seconds() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "ring_evicted_total", Help: "Publications evicted from the replay ring by its count, byte or age bound."}, func() float64 { return float64(c.ring.Stats().Evicted) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "requests_at_master", Help: "Requests sent to the master and not yet answered."}, func() float64 { _, _, n, _ := c.table.snapshot(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "dedup_entries", Help: "Requests remembered by the dedup table."}, func() float64 { _, n, _, _ := c.table.snapshot(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "requests_queued", Help: "Requests waiting at the core for a slot at the master (bounded by the dedup table: 100,000 entries, 256 MiB)."}, func() float64 { n, _ := c.table.queue(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "requests_queued_bytes", Help: "Bytes of the requests waiting for a slot at the master."}, func() float64 { _, b := c.table.queue(); return float64(b) }),
		// What the dedup table decides that its callers do not count (tableStats).
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_queue_full_total", Help: "Requests refused as busy because the queue towards the master was full in bytes (a part of requests_total{result=\"busy\"}; the rest: the dedup table was full)."}, func() float64 { return float64(c.table.counters().QueueFull) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "cancels_total", Help: "Requests an edge cancelled (a minion's retry chain withdrawn) before they reached the master."}, func() float64 { return float64(c.table.counters().Cancelled) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reply_evictions_total", Help: "Cached replies dropped to bound dedup_reply_bytes before their edge confirmed them; the edge's re-sent request is then refused as busy and its minion retries."}, func() float64 { return float64(c.table.counters().ReplyEvictions) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "dedup_reply_bytes", Help: "Bytes of replies cached until their edge confirms them."}, func() float64 { _, _, _, b := c.table.snapshot(); return float64(b) }),
	}
	for _, k := range protocolErrorKinds {
		m.protocolErrors.WithLabelValues(k)
	}
	for _, r := range []string{"version", "session_of_another_certificate"} {
		m.refusedEdges.WithLabelValues(r)
	}
	for _, r := range requestResults {
		m.requests.WithLabelValues(r)
	}
	for _, k := range []string{"publication", "reply"} {
		m.oversize.WithLabelValues(k)
	}
	m.perEdge = newEdgeSeriesSet()
	m.requests.WithLabelValues("no_master")
	m.bulkWaits = counter("bulk_replies_waited_total", "Large replies (over 64 KiB) that waited for their turn at their edge connection's gate (--bulk-in-flight-bytes).")
	m.repliesUnconfirmed = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "replies_unconfirmed_total",
		Help: "Replies written to an edge that did not confirm them (no done record: missing; a wrong one: malformed); each stays cached and is sent again when the edge re-sends its request."}, []string{"reason"})
	for _, r := range []string{"missing", "malformed"} {
		m.repliesUnconfirmed.WithLabelValues(r)
	}
	bulkGauges := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "bulk_replies_waiting", Help: "Large replies waiting for their turn at their edge connection's gate."}, func() float64 { return float64(c.bulkStats().Waiting) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "bulk_bytes_waiting", Help: "Bytes of the large replies waiting at the gates."}, func() float64 { return float64(c.bulkStats().WaitingBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "bulk_bytes_in_flight", Help: "Bytes of large replies admitted by the gates and not yet confirmed by their edge (at most --bulk-in-flight-bytes per connection, or one reply)."}, func() float64 { return float64(c.bulkStats().InFlight) }),
	}
	if reg != nil {
		reg.MustRegister(buildinfo.Collector(), newEdgeCollector(c, m.perEdge))
		reg.MustRegister(m.bulkWaits, m.repliesUnconfirmed)
		reg.MustRegister(bulkGauges...)
		reg.MustRegister(m.pubsIn, m.pubBytesIn, m.pubsOut, m.gapPubs, m.ringHead, m.edges, m.requests,
			m.requestsToMaster, m.masterSendErrors, m.badReplies, m.lateReplies, m.protocolErrors, m.refusedEdges, m.sessionsForgotten, m.oversize)
		reg.MustRegister(ringGauges...)
	}
	return m
}
