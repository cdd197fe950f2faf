package edge

import (
	"math"
	"time"
)

// Status is what `broker status` shows for an edge.
type Status struct {
	Role            string       `json:"role"`
	Core            string       `json:"core"`
	Connected       bool         `json:"connected"`
	Transport       string       `json:"transport,omitempty"`
	RTTMillis       float64      `json:"rtt_ms,omitempty"`
	CoreEpoch       uint64       `json:"core_epoch"`
	PubCursor       uint64       `json:"pub_cursor"`
	PendingRequests int          `json:"pending_requests"`
	MinionsPub      int64        `json:"minions_subscribed"`
	MinionsRet      int64        `json:"minion_req_sockets"`
	PoolCap         int          `json:"pool_cap"` // min(--max-connections, minions, ≥ 1)
	Connections     []ConnStatus `json:"connections"`
	// While no connection is up: since when (RFC 3339) and the last attempt's error.
	DownSince string `json:"down_since,omitempty"`
	LastError string `json:"last_error,omitempty"`
}

// ConnStatus is one connection of the pool.
type ConnStatus struct {
	Conn             uint32  `json:"conn"` // its slot, as POST /debug/close-connection?conn= takes it
	Transport        string  `json:"transport"`
	Anchor           bool    `json:"anchor"` // the connection the connect loop keeps up; the others are the sizer's
	Publications     bool    `json:"publications"`
	Retiring         bool    `json:"retiring,omitempty"`
	PingRTTMillis    float64 `json:"ping_rtt_ms"`
	SmoothedRTTMs    float64 `json:"smoothed_rtt_ms"`
	MinRTTMs         float64 `json:"min_rtt_ms"`
	CongestionWindow uint64  `json:"congestion_window_bytes"`
	LossRatio        float64 `json:"loss_ratio"` // over the sizer's last interval
	Requests         int64   `json:"requests_in_flight"`
	RequestBytes     int64   `json:"request_bytes_in_flight"`
}

// Ready reports whether a connection to the core is up.
func (e *Edge) Ready() bool { return e.pool.size() > 0 }

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Status returns the edge's state now.
func (e *Edge) Status() Status {
	epoch, cursor := e.cursor.get()
	s := Status{
		Role: "edge", Core: e.cfg.CoreAddr, CoreEpoch: epoch, PubCursor: cursor,
		PendingRequests: e.reqs.size(), MinionsPub: e.pub.Stats().Peers, MinionsRet: e.router.Stats().Peers,
		PoolCap: e.capacity(), Connections: []ConnStatus{},
	}
	conns, _ := e.pool.snapshot()
	for _, c := range conns {
		st := c.sess.Stats()
		s.Connections = append(s.Connections, ConnStatus{
			Conn: c.slot, Transport: c.sess.Transport(), Anchor: c.anchor, Publications: c.carriesPubs.Load(), Retiring: c.retiring.Load(),
			PingRTTMillis: millis(time.Duration(c.rtt.Load())), SmoothedRTTMs: millis(st.SmoothedRTT), MinRTTMs: millis(st.MinRTT),
			CongestionWindow: st.CongestionWindow, LossRatio: math.Float64frombits(c.lossRate.Load()),
			Requests: c.inflight.Load(), RequestBytes: c.inflightBytes.Load(),
		})
		if c.anchor || !s.Connected {
			s.Connected = true
			s.Transport = c.sess.Transport()
			s.RTTMillis = millis(time.Duration(c.rtt.Load()))
		}
	}
	if !s.Connected {
		if since, err := e.outage.state(); !since.IsZero() {
			s.DownSince, s.LastError = since.UTC().Format(time.RFC3339), err
		}
	}
	return s
}
