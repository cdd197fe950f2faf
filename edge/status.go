package edge

import "time"

// Status is what `broker status` shows for an edge.
type Status struct {
	Role            string  `json:"role"`
	Core            string  `json:"core"`
	Connected       bool    `json:"connected"`
	Transport       string  `json:"transport,omitempty"`
	RTTMillis       float64 `json:"rtt_ms,omitempty"`
	CoreEpoch       uint64  `json:"core_epoch"`
	PubCursor       uint64  `json:"pub_cursor"`
	PendingRequests int     `json:"pending_requests"`
	MinionsPub      int64   `json:"minions_subscribed"`
	MinionsRet      int64   `json:"minion_req_sockets"`
}

// Ready reports whether a connection to the core is up.
func (e *Edge) Ready() bool {
	c, _ := e.currentConn()
	return c != nil
}

// Status returns the edge's state now.
func (e *Edge) Status() Status {
	epoch, cursor := e.cursor.get()
	s := Status{
		Role: "edge", Core: e.cfg.CoreAddr, CoreEpoch: epoch, PubCursor: cursor,
		PendingRequests: e.reqs.size(), MinionsPub: e.pub.Stats().Peers, MinionsRet: e.router.Stats().Peers,
	}
	if c, _ := e.currentConn(); c != nil {
		s.Connected = true
		s.Transport = c.sess.Transport()
		s.RTTMillis = float64(time.Duration(c.rtt.Load()).Microseconds()) / 1000
	}
	return s
}
