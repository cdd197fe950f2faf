package edge

import (
	"math"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// poolCollector exports each pool connection's transport figures at scrape time,
// labelled by its slot (conn), so a connection that ended leaves no stale series.
type poolCollector struct {
	e               *Edge
	rtt, loss, cwnd *prometheus.Desc
}

func newPoolCollector(e *Edge) *poolCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("salt_broker_edge_tunnel_conn_"+name, help, []string{"conn", "transport"}, nil)
	}
	return &poolCollector{
		e:    e,
		rtt:  d("rtt_seconds", "Smoothed round trip time of each pool connection, from its transport (QUIC, or the kernel's TCP_INFO)."),
		loss: d("loss_ratio", "Packets lost of those sent by each pool connection over the sizer's last interval (1 s)."),
		cwnd: d("congestion_window_bytes", "Congestion window of each pool connection: what it may have in flight."),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.rtt
	ch <- c.loss
	ch <- c.cwnd
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	conns, _ := c.e.pool.snapshot()
	for _, k := range conns {
		st := k.sess.Stats()
		labels := []string{strconv.FormatUint(uint64(k.slot), 10), k.sess.Transport()}
		ch <- prometheus.MustNewConstMetric(c.rtt, prometheus.GaugeValue, st.SmoothedRTT.Seconds(), labels...)
		ch <- prometheus.MustNewConstMetric(c.loss, prometheus.GaugeValue, math.Float64frombits(k.lossRate.Load()), labels...)
		ch <- prometheus.MustNewConstMetric(c.cwnd, prometheus.GaugeValue, float64(st.CongestionWindow), labels...)
	}
}
