package edge

import "github.com/prometheus/client_golang/prometheus"

// metrics are the edge's Prometheus collectors; names are documented in docs/operations.md.
type metrics struct {
	requestsIn        *prometheus.CounterVec
	replies           *prometheus.CounterVec
	dropped           *prometheus.CounterVec
	latency           prometheus.Histogram
	pubs              prometheus.Counter
	pubDuplicates     prometheus.Counter
	gapPubs           prometheus.Counter
	connected         prometheus.Gauge
	transport         *prometheus.GaugeVec
	rtt               prometheus.Gauge
	reconnects        prometheus.Counter
	connectFailures   prometheus.Counter
	stalls            prometheus.Counter
	retries           prometheus.Counter
	retriesAfterReply *prometheus.CounterVec
	transportChanges  *prometheus.CounterVec
	poolChanges       *prometheus.CounterVec
}

func newMetrics(e *Edge, reg prometheus.Registerer) *metrics {
	const ns, sub = "salt_broker", "edge"
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	vec := func(name, help, label string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, []string{label})
	}
	m := &metrics{
		requestsIn:        vec("requests_total", "Requests received from minions, by class (auth, aes, clear, other).", "class"),
		replies:           vec("replies_total", "Request outcomes: delivered, minion_gone (its socket closed first), refused (by the core), send_failed.", "result"),
		dropped:           vec("requests_dropped_total", "Requests dropped by the edge, by cause: table_full (past --max-pending), table_bytes (past --max-pending-bytes), stale_auth, expired, superseded_reply (a reply for a request a minion retry replaced), retry_at_master (a minion's retry of a request the master already has), retry_replaced (an earlier try a minion's retry replaced).", "cause"),
		latency:           prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "request_duration_seconds", Help: "From a minion's request to its reply.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18)}),
		pubs:              counter("publications_total", "Publications re-published to minions."),
		pubDuplicates:     counter("publication_duplicates_total", "Publications received twice from the core and not re-published."),
		gapPubs:           counter("publication_gap_total", "Publications lost because an outage outlasted the core's replay window."),
		connected:         gauge("tunnel_up", "1 while a connection to the core is up."),
		transport:         prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "tunnel_transport", Help: "1 for the transport in use (quic or tcp)."}, []string{"transport"}),
		rtt:               gauge("tunnel_rtt_seconds", "Round trip time to the core, measured on the control stream."),
		reconnects:        counter("tunnel_reconnects_total", "Connections to the core that ended and were replaced."),
		connectFailures:   counter("tunnel_handshake_failures_total", "Connections the core refused at the hello."),
		stalls:            counter("tunnel_stalls_total", "Connections ended because nothing (no packet, no pong) arrived from the core for the stall timeout (2 s) while a ping was unanswered."),
		transportChanges:  vec("tunnel_transport_changes_total", "Moves between transports, by the transport moved to (tcp: QUIC did not come up; quic: it works again).", "to"),
		retries:           counter("minion_retries_total", "Requests recognised as a minion's own retry of an earlier try of theirs."),
		poolChanges:       vec("tunnel_pool_changes_total", "Changes of the pool of connections to the core, by reason: random_loss (grew: requests wait and loss looks random), congestion (shrank: RTT climbs with loss), idle (shrank: no request for 30 s), cap (shrank: past min(--max-connections, minions)), transport (shrank: on another transport than the pool), lost (a connection ended by itself).", "reason"),
		retriesAfterReply: vec("minion_retries_after_reply_total", "Requests that came, on a new socket, just after the reply to their minion's same-shape request, as when its retry timer fired as the reply arrived: dropped (one retry timer after that try: the master has the chain) or passed (the timing could not tell, after an outage held the answer up; the master may see the return twice).", "action"),
	}
	for _, r := range poolChangeReasons {
		m.poolChanges.WithLabelValues(r) // every reason shows, at 0, from the start
	}
	if reg != nil {
		reg.MustRegister(m.requestsIn, m.replies, m.dropped, m.latency, m.pubs, m.pubDuplicates, m.gapPubs,
			m.connected, m.transport, m.rtt, m.reconnects, m.connectFailures, m.stalls, m.retries, m.retriesAfterReply, m.transportChanges,
			m.poolChanges, newZMTPCollector(e), newPoolCollector(e),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "tunnel_pool_connections", Help: "Connections to the core in the pool now (the sizer keeps it between 1 and min(--max-connections, minions))."}, func() float64 { return float64(e.pool.size()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "requests_pending", Help: "Requests held until their reply arrives."}, func() float64 { return float64(e.reqs.size()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "requests_pending_bytes", Help: "Bytes of the requests held (bounded by --max-pending-bytes)."}, func() float64 { return float64(e.reqs.pendingBytes()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "pub_cursor", Help: "Sequence of the last publication re-published."}, func() float64 { _, c := e.cursor.get(); return float64(c) }),
		)
	}
	return m
}
