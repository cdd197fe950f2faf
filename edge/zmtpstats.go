package edge

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/salt-broker/salt-broker/internal/zmtp"
)

// zmtpCollector exports the minion-facing sockets' counters at scrape time.
type zmtpCollector struct {
	e                                               *Edge
	peers, accepted, bytes, msgs, queued, drops, hs *prometheus.Desc
}

func newZMTPCollector(e *Edge) *zmtpCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("salt_broker_edge_zmtp_"+name, help, append([]string{"socket"}, labels...), nil)
	}
	return &zmtpCollector{
		e:        e,
		peers:    d("peers", "Minion connections open now (handshake done)."),
		accepted: d("connections_total", "Connections accepted."),
		bytes:    d("bytes_total", "Payload bytes.", "direction"),
		msgs:     d("messages_total", "Messages.", "direction"),
		queued:   d("queued_bytes", "Payload bytes queued to minions or being written now (each connection's queue is bounded by bytes too)."),
		drops:    d("drops_total", "Messages or connections dropped, by cause (queue_full: a connection's queue at its message bound; queue_bytes: at its byte bound; unknown_peer, too_big, max_peers, write_timeout, protocol_error, heartbeat_timeout).", "cause"),
		hs:       d("handshake_failures_total", "Failed ZeroMQ handshakes, by cause (timeout, bad_greeting, bad_version, bad_mechanism, bad_ready, bad_socket_type, closed).", "cause"),
	}
}

func (c *zmtpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.peers, c.accepted, c.bytes, c.msgs, c.queued, c.drops, c.hs} {
		ch <- d
	}
}

func (c *zmtpCollector) Collect(ch chan<- prometheus.Metric) {
	for socket, s := range map[string]zmtp.Stats{"pub": c.e.pub.Stats(), "ret": c.e.router.Stats()} {
		ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(s.Peers), socket)
		ch <- prometheus.MustNewConstMetric(c.accepted, prometheus.CounterValue, float64(s.PeersAccepted), socket)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.BytesIn), socket, "in")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.BytesOut), socket, "out")
		ch <- prometheus.MustNewConstMetric(c.msgs, prometheus.CounterValue, float64(s.MsgsIn), socket, "in")
		ch <- prometheus.MustNewConstMetric(c.msgs, prometheus.CounterValue, float64(s.MsgsOut), socket, "out")
		ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(s.QueuedBytes), socket)
		for cause, n := range s.Drops {
			ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(n), socket, cause)
		}
		for cause, n := range s.HandshakeFailures {
			ch <- prometheus.MustNewConstMetric(c.hs, prometheus.CounterValue, float64(n), socket, cause)
		}
	}
}
