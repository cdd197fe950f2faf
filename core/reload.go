package core

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/tunnel"
)

// Reload loads src (the core's certificate, key, CA, --allow-edge and --deny-edge;
// pass Certs().Source() to read the same files again) for new handshakes, then
// disconnects every edge whose certificate the new material refuses: revoked by
// fingerprint, no longer allowed, or not signed by a CA trusted now. Established
// edges that pass carry on untouched. On error nothing changed: the old material
// stays in use and the error says what failed.
func (c *Core) Reload(src certs.Source) error {
	st := c.cfg.Certs
	if st == nil {
		return errors.New("this core was started without a certificate store: nothing to reload")
	}
	ch, err := st.Reload(src)
	if err != nil {
		return fmt.Errorf("reload certificates (keeping the old ones): %w", err)
	}
	c.mu.Lock()
	conns := make([]*edgeConn, 0, len(c.edges))
	for e := range c.edges {
		conns = append(conns, e)
	}
	c.mu.Unlock()
	cut := 0
	for _, e := range conns {
		if !c.admitAfterReload(e) {
			cut++
		}
	}
	c.log.Info("certificates reloaded", "cert_changed", ch.Cert, "ca_changed", ch.CA, "allow_edge_changed", ch.AllowEdges,
		"deny_edge_changed", ch.DenyEdges, "fingerprint", ch.Fingerprint, "not_after", ch.NotAfter.UTC(),
		"deny_list", ch.Denied, "edges_checked", len(conns), "edges_disconnected", cut)
	st.WarnExpiry(c.log)
	return nil
}

// admitAfterReload checks an edge connection's certificate against the current
// material and, if it is refused now, closes the connection with the reason. Run at
// each reload on every edge and once on each new connection (a handshake verified
// just before a reload may be delivered just after it), it leaves no window in which
// a revoked edge stays connected. True: the edge may stay.
func (c *Core) admitAfterReload(e *edgeConn) bool {
	st := c.cfg.Certs
	if st == nil {
		return true
	}
	peers := tunnel.PeerCertificates(e.sess)
	err := st.CheckEdge(tls.ConnectionState{PeerCertificates: peers})
	if err == nil {
		return true
	}
	fp := ""
	if len(peers) > 0 {
		fp = certs.Fingerprint(peers[0])
	}
	// The connection's logger names the edge (edge=, its certificate name) and remote=.
	e.logger().Warn("edge disconnected: its certificate is refused since the certificates were reloaded",
		"fingerprint", fp, "reason", err)
	reason := "certificate refused since the core reloaded its certificates: " + err.Error()
	if len(reason) > 300 { // a QUIC close reason travels in one packet
		reason = reason[:300]
	}
	_ = e.sess.CloseWithError(reason)
	return false
}

// Certs is the core's certificate store (nil when started without one).
func (c *Core) Certs() *certs.Store { return c.cfg.Certs }
