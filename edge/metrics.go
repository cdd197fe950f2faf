package edge

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/salt-broker/salt-broker/internal/buildinfo"
	"github.com/salt-broker/salt-broker/internal/saltmsg"
)

// The label values of every labelled series, each declared at 0 when the edge
// starts: absent() and ratio alerts (dropped / received) need a series before its
// first event, and rate() needs the 0 before the first increment to see it.
var (
	requestClasses        = []string{saltmsg.ClassAuth.String(), saltmsg.ClassAES.String(), saltmsg.ClassClear.String(), saltmsg.ClassOther.String()}
	replyResults          = []string{"delivered", "minion_gone", "refused", "send_failed"}
	dropCauses            = []string{tableFull, tableBytes, "stale_auth", "expired", "superseded_reply", "retry_at_master", "retry_replaced"}
	retryAfterReplyAction = []string{"dropped", "passed"}
	transports            = []string{"quic", "tcp"}
)

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
	transport         transportGauge
	rtt               rttMetric
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
		requestsIn:    vec("requests_total", "Requests received from minions, by class (auth, aes, clear, other).", "class"),
		replies:       vec("replies_total", "Request outcomes: delivered, minion_gone (its socket closed first), refused (by the core), send_failed.", "result"),
		dropped:       vec("requests_dropped_total", "Requests dropped by the edge, by cause: table_full (past --max-pending), table_bytes (past --max-pending-bytes), stale_auth, expired, superseded_reply (a reply for a request a minion retry replaced), retry_at_master (a minion's retry of a request the master already has), retry_replaced (an earlier try a minion's retry replaced).", "cause"),
		latency:       prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "request_duration_seconds", Help: "From a minion's request to its reply.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18)}),
		pubs:          counter("publications_total", "Publications re-published to minions."),
		pubDuplicates: counter("publication_duplicates_total", "Publications received twice from the core and not re-published."),
		gapPubs:       counter("publication_gap_total", "Publications lost because an outage outlasted the core's replay window."),
		connected:     gauge("tunnel_up", "1 while a connection to the core is up."),
		transport:     transportGauge{prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "tunnel_transport", Help: "1 for the transport of the last connection made (quic or tcp), 0 for the other."}, []string{"transport"})},
		rtt: rttMetric{
			last: gauge("tunnel_rtt_seconds", "Round trip time to the core, measured on the control stream: the last ping answered, on any connection of the pool."),
			hist: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "tunnel_ping_rtt_seconds",
				Help:    "Round trip times of the control stream's pings (every --ping-interval on every connection of the pool; a pong queued behind data reads long).",
				Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 0.8, 1, 1.5, 2.5, 5, 10}}),
		},
		reconnects:        counter("tunnel_reconnects_total", "Connections to the core that ended and were replaced."),
		connectFailures:   counter("tunnel_handshake_failures_total", "Connections the core refused at the hello."),
		stalls:            counter("tunnel_stalls_total", "Connections ended because nothing (no packet, no pong) arrived from the core for the stall timeout (2 s) while a ping was unanswered."),
		transportChanges:  vec("tunnel_transport_changes_total", "Moves between transports, by the transport moved to (tcp: QUIC did not come up; quic: it works again).", "to"),
		retries:           counter("minion_retries_total", "Requests recognised as a minion's own retry of an earlier try of theirs."),
		poolChanges:       vec("tunnel_pool_changes_total", "Changes of the pool of connections to the core, by reason: random_loss (grew: requests wait and loss looks random), congestion (shrank: RTT climbs with loss), idle (shrank: no request for 30 s), cap (shrank: past min(--max-connections, minions)), transport (shrank: on another transport than the pool), lost (a connection ended by itself).", "reason"),
		retriesAfterReply: vec("minion_retries_after_reply_total", "Requests that came, on a new socket, just after the reply to their minion's same-shape request, as when its retry timer fired as the reply arrived: dropped (one retry timer after that try: the master has the chain) or passed (the timing could not tell, after an outage held the answer up; the master may see the return twice).", "action"),
	}
	declare := func(v *prometheus.CounterVec, values []string) {
		for _, l := range values {
			v.WithLabelValues(l)
		}
	}
	declare(m.poolChanges, poolChangeReasons)
	declare(m.requestsIn, requestClasses)
	declare(m.replies, replyResults)
	declare(m.dropped, dropCauses)
	declare(m.retriesAfterReply, retryAfterReplyAction)
	declare(m.transportChanges, transports)
	m.transport.Reset()
	if reg != nil {
		reg.MustRegister(buildinfo.Collector(), m.rtt.hist)
		reg.MustRegister(m.requestsIn, m.replies, m.dropped, m.latency, m.pubs, m.pubDuplicates, m.gapPubs,
			m.connected, m.transport.vec, m.rtt.last, m.reconnects, m.connectFailures, m.stalls, m.retries, m.retriesAfterReply, m.transportChanges,
			m.poolChanges, newZMTPCollector(e), newPoolCollector(e),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "tunnel_pool_connections", Help: "Connections to the core in the pool now (the sizer keeps it between 1 and min(--max-connections, minions))."}, func() float64 { return float64(e.pool.size()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "requests_pending", Help: "Requests held until their reply arrives."}, func() float64 { return float64(e.reqs.size()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "requests_pending_bytes", Help: "Bytes of the requests held (bounded by --max-pending-bytes)."}, func() float64 { return float64(e.reqs.pendingBytes()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "pub_cursor", Help: "Sequence of the last publication re-published."}, func() float64 { _, c := e.cursor.get(); return float64(c) }),
		)
	}
	return m
}

// rttMetric takes each ping's round trip time: the last one as a gauge, all of
// them in a histogram (percentiles over time, which one gauge sampled at scrape
// time cannot give).
type rttMetric struct {
	last prometheus.Gauge
	hist prometheus.Histogram
}

// Set records one round trip time, in seconds.
func (r rttMetric) Set(seconds float64) {
	r.last.Set(seconds)
	r.hist.Observe(seconds)
}

// transportGauge is tunnel_transport with both transports always present: Reset
// sets them to 0 instead of deleting them, so the one not in use reads 0, not
// absent.
type transportGauge struct{ vec *prometheus.GaugeVec }

// Reset sets every transport to 0.
func (t transportGauge) Reset() {
	for _, tr := range transports {
		t.vec.WithLabelValues(tr).Set(0)
	}
}

// WithLabelValues is the gauge of one transport.
func (t transportGauge) WithLabelValues(tr string) prometheus.Gauge { return t.vec.WithLabelValues(tr) }
