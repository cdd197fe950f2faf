package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Source names what one side loads at start and again at each reload (SIGHUP).
type Source struct {
	CA, Cert, Key string
	// AllowEdges (core only): accept only edges of these certificate names; empty: any.
	AllowEdges []string
	// DenyEdges (core only): SHA-256 fingerprints of refused edge certificates, or
	// files of them; the files are read again at each reload.
	DenyEdges []string
}

// material is one consistent load of a Source: a reload swaps all of it or none.
type material struct {
	src   Source
	cert  tls.Certificate // Leaf set
	pool  *x509.CertPool
	cas   []*x509.Certificate
	deny  map[string]bool
	allow []string
	// client is the edge's TLS configuration for this material (crypto/tls checks
	// the core's chain and name against pool); nil on the core.
	client *tls.Config
}

// Store holds a side's current certificates, key, CA and edge lists. The TLS
// configurations it hands out read the current material at every handshake, so a
// Reload applies to new connections while established ones carry on.
type Store struct {
	role Role
	cur  atomic.Pointer[material]
	mu   sync.Mutex // serialises Reload: two reloads at once must not interleave their checks
}

// NewStore loads src for a side of role (RoleCore or RoleEdge).
func NewStore(role Role, src Source) (*Store, error) {
	s := &Store{role: role}
	m, err := load(role, src)
	if err != nil {
		return nil, err
	}
	s.cur.Store(m)
	return s, nil
}

// Role is the side this store serves.
func (s *Store) Role() Role { return s.role }

// Source is what the current material was loaded from: pass it to Reload to read
// the same files again.
func (s *Store) Source() Source { return s.cur.Load().src }

// Certificate is this side's current certificate.
func (s *Store) Certificate() *x509.Certificate { return s.cur.Load().cert.Leaf }

// CAs are the CA certificates currently trusted (more than one during a rollover).
func (s *Store) CAs() []*x509.Certificate { return slices.Clone(s.cur.Load().cas) }

// Change says what a Reload replaced, for its log line.
type Change struct {
	Cert, CA, AllowEdges, DenyEdges bool
	Fingerprint                     string    // of this side's certificate now
	NotAfter                        time.Time // of this side's certificate now
	Denied                          int       // fingerprints on the deny-list now
}

// Reload loads src and, only if all of it loads and checks, makes it current.
// On error the old material stays in use and the error says what failed.
func (s *Store) Reload(src Source) (Change, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := load(s.role, src)
	if err != nil {
		return Change{}, err
	}
	old := s.cur.Swap(m)
	return Change{
		Cert:        !old.cert.Leaf.Equal(m.cert.Leaf),
		CA:          !slices.EqualFunc(old.cas, m.cas, (*x509.Certificate).Equal),
		AllowEdges:  !slices.Equal(old.allow, m.allow),
		DenyEdges:   !mapsEqual(old.deny, m.deny),
		Fingerprint: Fingerprint(m.cert.Leaf),
		NotAfter:    m.cert.Leaf.NotAfter,
		Denied:      len(m.deny),
	}, nil
}

func mapsEqual(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func load(role Role, src Source) (*material, error) {
	if role != RoleCore && role != RoleEdge {
		return nil, fmt.Errorf("unknown role %q: want edge or core", role)
	}
	if role == RoleEdge && (len(src.AllowEdges) > 0 || len(src.DenyEdges) > 0) {
		return nil, errors.New("--allow-edge and --deny-edge are core settings: the core decides which edges it accepts")
	}
	cas, err := readCAs(src.CA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	cert, err := tls.LoadX509KeyPair(src.Cert, src.Key)
	if err != nil {
		return nil, fmt.Errorf("load %s certificate %s with key %s: %w", role, src.Cert, src.Key, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parse %s: %w", src.Cert, err)
		}
	}
	if err := checkOwn(cert, role, src.Cert); err != nil {
		return nil, err
	}
	deny, err := parseDeny(src.DenyEdges)
	if err != nil {
		return nil, err
	}
	m := &material{src: cloneSource(src), cert: cert, pool: pool, cas: cas, deny: deny, allow: slices.Clone(src.AllowEdges)}
	if role == RoleEdge {
		m.client = clientConfig(pool, cert)
	}
	return m, nil
}

func cloneSource(s Source) Source {
	s.AllowEdges, s.DenyEdges = slices.Clone(s.AllowEdges), slices.Clone(s.DenyEdges)
	return s
}

// readCAs reads every certificate of a CA file: during a rollover it holds the old
// CA and the new one, and both are trusted.
func readCAs(file string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", file, err)
	}
	var cas []*x509.Certificate
	for n := 1; ; n++ {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("CA file %s: block %d is a %s, not a certificate (a key in the CA file?)", file, n, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA file %s: certificate %d: %w", file, n, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("CA file %s: certificate %d (%q) is not a CA certificate: --ca takes ca.crt from 'broker certs init'", file, n, c.Subject.CommonName)
		}
		cas = append(cas, c)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", file)
	}
	return cas, nil
}

// ServerTLS is the core's TLS configuration: the certificate served and every
// check of an edge read the current material at each handshake.
func (s *Store) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Certificates stays empty: crypto/tls then always asks GetCertificate.
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c := s.cur.Load().cert
			return &c, nil
		},
		// As in serverConfig: RequestClientCert so that an edge without a certificate
		// reaches VerifyConnection and its refusal is logged with a reason.
		ClientAuth:       tls.RequestClientCert,
		VerifyConnection: s.CheckEdge,
	}
}

// ClientTLS is the edge's TLS configuration for the next connection: call it per
// dial (tunnel.Config.TLSFunc), so a reload applies to the next handshake.
func (s *Store) ClientTLS() *tls.Config { return s.cur.Load().client.Clone() }

// CheckEdge verifies an edge's connection against the current material: chain to
// a CA trusted now, role edge, on the allow-list if there is one, not denied. The
// core runs it at each handshake and, at a reload, on every established edge.
func (s *Store) CheckEdge(cs tls.ConnectionState) error {
	m := s.cur.Load()
	if len(cs.PeerCertificates) == 0 {
		return errors.New("peer presented no client certificate: an edge needs one from 'broker certs issue --role edge'")
	}
	leaf := cs.PeerCertificates[0]
	if fp := Fingerprint(leaf); m.deny[fp] {
		return fmt.Errorf("edge %q: certificate %s is on the deny-list (--deny-edge)", leaf.Subject.CommonName, fp)
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return explainVerify(leaf, err)
	}
	return checkPeer(RoleEdge, m.allow)(cs)
}
