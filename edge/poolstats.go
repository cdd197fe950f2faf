package edge

import (
	"math"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// poolCollector exports each pool connection's transport figures at scrape time,
// labelled by its slot (conn), so a connection that ended leaves no stale series.
// The byte and packet counts are each connection's own: a connection that replaces
// another in its slot starts from 0, which rate() reads as a counter reset.
type poolCollector struct {
	e                               *Edge
	rtt, minRTT, loss, cwnd         *prometheus.Desc
	bytes, packetsSent, packetsLost *prometheus.Desc
}

func newPoolCollector(e *Edge) *poolCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("salt_broker_edge_tunnel_conn_"+name, help, []string{"conn", "transport"}, nil)
	}
	return &poolCollector{
		e:      e,
		rtt:    d("rtt_seconds", "Smoothed round trip time of each pool connection, from its transport (QUIC, or the kernel's TCP_INFO)."),
		loss:   d("loss_ratio", "Packets lost of those sent by each pool connection over the sizer's last interval (1 s)."),
		cwnd:   d("congestion_window_bytes", "Congestion window of each pool connection: what it may have in flight."),
		minRTT: d("min_rtt_seconds", "Smallest round trip time each pool connection measured: the path's delay without queues."),
		bytes: prometheus.NewDesc("salt_broker_edge_tunnel_conn_bytes_total", "Bytes each pool connection sent (out) and received (in), counted by QUIC (on TCP the kernel does not say: absent).",
			[]string{"conn", "transport", "direction"}, nil),
		packetsSent: d("packets_sent_total", "Packets (QUIC) or segments (TCP) each pool connection sent, those later lost included."),
		packetsLost: d("packets_lost_total", "Packets each pool connection's QUIC declared lost, or segments TCP retransmitted."),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.rtt, c.minRTT, c.loss, c.cwnd, c.bytes, c.packetsSent, c.packetsLost} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	conns, _ := c.e.pool.snapshot()
	for _, k := range conns {
		st := k.sess.Stats()
		labels := []string{strconv.FormatUint(uint64(k.slot), 10), k.sess.Transport()}
		ch <- prometheus.MustNewConstMetric(c.rtt, prometheus.GaugeValue, st.SmoothedRTT.Seconds(), labels...)
		ch <- prometheus.MustNewConstMetric(c.loss, prometheus.GaugeValue, math.Float64frombits(k.lossRate.Load()), labels...)
		ch <- prometheus.MustNewConstMetric(c.cwnd, prometheus.GaugeValue, float64(st.CongestionWindow), labels...)
		ch <- prometheus.MustNewConstMetric(c.minRTT, prometheus.GaugeValue, st.MinRTT.Seconds(), labels...)
		ch <- prometheus.MustNewConstMetric(c.packetsSent, prometheus.CounterValue, float64(st.PacketsSent), labels...)
		ch <- prometheus.MustNewConstMetric(c.packetsLost, prometheus.CounterValue, float64(st.PacketsLost), labels...)
		if st.BytesSent > 0 || st.BytesReceived > 0 {
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(st.BytesSent), append(labels, "out")...)
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(st.BytesReceived), append(labels, "in")...)
		}
	}
}
