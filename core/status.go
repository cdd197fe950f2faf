package core

import "fmt"

// Status is what `broker status` shows for a core.
type Status struct {
	Role             string       `json:"role"`
	Epoch            uint64       `json:"epoch"`
	HeadSeq          uint64       `json:"head_seq"`
	RingMessages     int          `json:"ring_messages"`
	RingBytes        int64        `json:"ring_bytes"`
	RingOldestSecs   float64      `json:"ring_oldest_age_s"`
	RequestsAtMaster int          `json:"requests_at_master"`
	DedupEntries     int          `json:"dedup_entries"`
	MasterSub        bool         `json:"master_sub_connected"`
	MasterDealer     bool         `json:"master_dealer_connected"`
	Edges            []EdgeStatus `json:"edges"`
}

// EdgeStatus is one connection from an edge: an edge running a pool has one per
// connection, with the same session and their own slot (Conn).
type EdgeStatus struct {
	Name        string  `json:"name"`
	EdgeName    string  `json:"edge_name,omitempty"`
	EdgeSession string  `json:"edge_session,omitempty"` // empty until its hello
	Conn        uint32  `json:"conn"`
	Remote      string  `json:"remote"`
	Transport   string  `json:"transport"`
	RTTMillis   float64 `json:"rtt_ms"`
	PubCursor   uint64  `json:"pub_cursor"`
	Lag         uint64  `json:"pub_lag"`
}

// Ready reports whether the core can serve edges: both of its sockets are connected
// to the master. It is what /readyz answers, which a load balancer or systemd
// watchdog trusts.
func (c *Core) Ready() bool { return c.master.Load().ready() }

// Status returns the core's state now.
func (c *Core) Status() Status {
	rs := c.ring.Stats()
	_, entries, atMaster, _ := c.table.snapshot()
	s := Status{Role: "core", Epoch: c.epoch, HeadSeq: rs.Head, RingMessages: rs.Count, RingBytes: rs.Bytes,
		RingOldestSecs: rs.OldestAge.Seconds(), RequestsAtMaster: atMaster, DedupEntries: entries, Edges: []EdgeStatus{}}
	if l := c.master.Load(); l != nil {
		s.MasterSub, s.MasterDealer = l.sub.connected(), l.dealer.connected()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := range c.edges {
		cur := e.cursor.Load()
		es := EdgeStatus{Name: e.sess.PeerName(), Remote: e.sess.RemoteAddr().String(), Transport: e.sess.Transport(), PubCursor: cur,
			RTTMillis: float64(e.sess.Stats().SmoothedRTT.Microseconds()) / 1000}
		if p := e.said(); p != nil {
			es.EdgeName, es.EdgeSession, es.Conn = p.hello.EdgeName, fmt.Sprintf("%016x", p.hello.EdgeSession), p.hello.Conn
		}
		if rs.Head > cur {
			es.Lag = rs.Head - cur
		}
		s.Edges = append(s.Edges, es)
	}
	return s
}
