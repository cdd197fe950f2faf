package tunnel

import (
	"crypto/tls"
	"crypto/x509"
)

// PeerCertificates are the certificates the peer of s presented, leaf first (nil
// when unknown): the core checks them again when its certificates are reloaded.
func PeerCertificates(s Session) []*x509.Certificate {
	switch s := s.(type) {
	case quicSession:
		return s.c.ConnectionState().TLS.PeerCertificates
	case *tcpSession:
		return s.tls.ConnectionState().PeerCertificates
	case interface{ ConnectionState() tls.ConnectionState }:
		return s.ConnectionState().PeerCertificates
	}
	return nil
}
