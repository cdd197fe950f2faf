package edge

import (
	"errors"
	"fmt"

	"github.com/salt-broker/salt-broker/certs"
)

// Reload loads src (the edge's certificate, key and CA; pass Certs().Source() to
// read the same files again) for the connections dialed from now on. Established
// connections keep the handshake they made: the core decides whether they stay. On
// error nothing changed: the old material stays in use and the error says what
// failed.
func (e *Edge) Reload(src certs.Source) error {
	st := e.cfg.Certs
	if st == nil {
		return errors.New("this edge was started without a certificate store: nothing to reload")
	}
	ch, err := st.Reload(src)
	if err != nil {
		return fmt.Errorf("reload certificates (keeping the old ones): %w", err)
	}
	e.log.Info("certificates reloaded: new connections to the core use them", "cert_changed", ch.Cert, "ca_changed", ch.CA,
		"fingerprint", ch.Fingerprint, "not_after", ch.NotAfter.UTC())
	st.WarnExpiry(e.log)
	return nil
}

// Certs is the edge's certificate store (nil when started without one).
func (e *Edge) Certs() *certs.Store { return e.cfg.Certs }
