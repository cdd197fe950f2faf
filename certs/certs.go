// Package certs makes and loads salt-broker's certificates: one private CA per
// deployment, core certificates naming the hosts edges dial, and edge certificates.
// Every tunnel is TLS 1.3 with mutual authentication against that CA, and each side
// also checks the other's role, so an edge certificate can never act as a core.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Role says what a certificate may be used for.
type Role string

// Roles.
const (
	RoleEdge Role = "edge"
	RoleCore Role = "core"
)

// Default validities, in days (--days overrides them). Ten years for the CA,
// whose rollover means touching every machine; two years for the leaves, short
// enough that a lost key ages out, long enough that renewal is a yearly chore at
// most. The expiry metric and its 30-day warning make either safe to let run.
const (
	DefaultCADays   = 10 * 365
	DefaultLeafDays = 2 * 365
	orgName         = "salt-broker"
)

func days(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

type keyPair struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func newCA(validDays int) (*keyPair, error) {
	if validDays <= 0 {
		validDays = DefaultCADays
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		// The date tells two CAs apart in a bundle during a rollover (certs show,
		// the expiry metric's name label).
		Subject:               pkix.Name{CommonName: "salt-broker CA " + now.UTC().Format("2006-01-02"), Organization: []string{orgName}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(days(validDays)),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return &keyPair{cert: cert, der: der, key: key}, err
}

// issue signs a leaf for name; key nil makes a new one (renew --keep-key passes the old).
func (ca *keyPair) issue(name string, role Role, hosts []string, validDays int, key *ecdsa.PrivateKey) (*keyPair, error) {
	if validDays <= 0 {
		validDays = DefaultLeafDays
	}
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, err
		}
	}
	notAfter := time.Now().Add(days(validDays))
	if notAfter.After(ca.cert.NotAfter) {
		// A leaf outliving its CA would stop verifying on the CA's last day anyway:
		// say so now rather than then.
		return nil, fmt.Errorf("%d days would outlast the CA, which expires %s (%d days left): use fewer days, or roll the CA over first (docs/operations.md)",
			validDays, ca.cert.NotAfter.UTC().Format(time.DateOnly), int(time.Until(ca.cert.NotAfter).Hours()/24))
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{orgName}, OrganizationalUnit: []string{string(role)}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	switch role {
	case RoleCore:
		if len(hosts) == 0 {
			return nil, errors.New("a core certificate needs at least one host (the DNS name or IP edges dial)")
		}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, h := range hosts {
			if ip := net.ParseIP(strings.Trim(h, "[]")); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	case RoleEdge:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	default:
		return nil, fmt.Errorf("unknown role %q: want edge or core", role)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return &keyPair{cert: cert, der: der, key: key}, err
}

func writePair(dir, name string, kp *keyPair) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(kp.key)
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s exists already; remove it first if you mean to replace it", p)
		}
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: kp.der}), 0o644)
}

// InitCA writes a new CA to DIR/ca.crt and DIR/ca.key; it refuses to overwrite one.
func InitCA(dir string) error { return InitCADays(dir, 0) }

// InitCADays is InitCA with a validity of validDays (0: DefaultCADays).
func InitCADays(dir string, validDays int) error {
	if validDays < 0 {
		return fmt.Errorf("--days %d: must be at least 1", validDays)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	ca, err := newCA(validDays)
	if err != nil {
		return fmt.Errorf("generate CA: %w", err)
	}
	if err := writePair(dir, "ca", ca); err != nil {
		return fmt.Errorf("write CA: %w", err)
	}
	return nil
}

func loadCA(dir string) (*keyPair, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, fmt.Errorf("load the CA from %s (run 'broker certs init --dir %s' first): %w", dir, dir, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("the CA key is not an ECDSA key made by 'broker certs init'")
	}
	return &keyPair{cert: cert, der: pair.Certificate[0], key: key}, nil
}

// Issue writes DIR/NAME.crt and DIR/NAME.key, signed by the CA in DIR.
func Issue(dir, name string, role Role, hosts []string) error {
	return IssueDays(dir, name, role, hosts, 0)
}

// IssueDays is Issue with a validity of validDays (0: DefaultLeafDays).
func IssueDays(dir, name string, role Role, hosts []string, validDays int) error {
	if err := checkName(name); err != nil {
		return err
	}
	if validDays < 0 {
		return fmt.Errorf("--days %d: must be at least 1", validDays)
	}
	ca, err := loadCA(dir)
	if err != nil {
		return err
	}
	kp, err := ca.issue(name, role, hosts, validDays, nil)
	if err != nil {
		return fmt.Errorf("issue %s certificate %s: %w", role, name, err)
	}
	if err := writePair(dir, name, kp); err != nil {
		return fmt.Errorf("write %s certificate: %w", name, err)
	}
	return nil
}

func checkName(name string) error {
	if name == "" || name == "ca" || filepath.Base(name) != name {
		return fmt.Errorf("certificate name %q: use a plain name such as site-a", name)
	}
	return nil
}

func loadPool(caFile string) (*x509.CertPool, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
	}
	return pool, nil
}

func roleOf(c *x509.Certificate) Role {
	if len(c.Subject.OrganizationalUnit) == 1 {
		return Role(c.Subject.OrganizationalUnit[0])
	}
	return ""
}

// checkPeer verifies the peer's role (and, for edges, the allow-list) after chain verification.
func checkPeer(want Role, allow []string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("peer presented no certificate: it needs one issued with 'broker certs issue --role %s'", want)
		}
		leaf := cs.PeerCertificates[0]
		if got := roleOf(leaf); got != want {
			return fmt.Errorf("certificate %q has role %q, but a %s is required here", leaf.Subject.CommonName, got, want)
		}
		if len(allow) > 0 && !slices.Contains(allow, leaf.Subject.CommonName) {
			return fmt.Errorf("edge %q is not in --allow-edge", leaf.Subject.CommonName)
		}
		return nil
	}
}

func serverConfig(pool *x509.CertPool, cert tls.Certificate, allow []string) *tls.Config {
	roleCheck := checkPeer(RoleEdge, allow)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// The chain is verified in VerifyConnection rather than by crypto/tls, so that
		// every refusal, an unknown CA included, passes through one place the listener logs.
		// RequestClientCert (not Require...) so that a client without any certificate
		// also reaches VerifyConnection, which refuses it, and the refusal is logged.
		ClientAuth: tls.RequestClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("peer presented no client certificate: an edge needs one from 'broker certs issue --role edge'")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				return explainVerify(leaf, err)
			}
			return roleCheck(cs)
		},
	}
}

// explainVerify names the usual causes of a failed chain check in operator terms.
func explainVerify(leaf *x509.Certificate, err error) error {
	name := leaf.Subject.CommonName
	var ua x509.UnknownAuthorityError
	var inv x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		return fmt.Errorf("certificate %q not trusted: it was issued by another CA (%q), not this deployment's: %w", name, leaf.Issuer.CommonName, err)
	case errors.As(err, &inv) && inv.Reason == x509.Expired:
		return fmt.Errorf("certificate %q not trusted: outside its validity %s .. %s (re-issue it, or check the clocks): %w",
			name, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), err)
	case errors.As(err, &inv) && inv.Reason == x509.IncompatibleUsage:
		return fmt.Errorf("certificate %q not trusted: its key usage does not allow this role (a core certificate used as an edge?): %w", name, err)
	}
	return fmt.Errorf("certificate %q not trusted: %w (was it issued by this deployment's CA?)", name, err)
}

func clientConfig(pool *x509.CertPool, cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		RootCAs:          pool,
		VerifyConnection: checkPeer(RoleCore, nil),
	}
}

// checkOwn catches an edge/core certificate mix-up at start-up instead of as refused
// handshakes on the other side of the WAN. Whether our own certificate chains to the
// CA we trust is deliberately not checked: the peer may trust more than we do, and
// the peer's refusal (logged there) is the authoritative answer.
func checkOwn(cert tls.Certificate, want Role, file string) error {
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("parse %s: %w", file, err)
		}
	}
	if got := roleOf(leaf); got != want {
		return fmt.Errorf("certificate %s (%q) has role %q, but this side needs a %s certificate", file, leaf.Subject.CommonName, got, want)
	}
	return nil
}

// LoadServer builds the core's TLS config: TLS 1.3 only, a client certificate from
// the CA with role edge required, optionally restricted to allowEdges by name.
func LoadServer(caFile, certFile, keyFile string, allowEdges []string) (*tls.Config, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load core certificate %s: %w", certFile, err)
	}
	if err := checkOwn(cert, RoleCore, certFile); err != nil {
		return nil, err
	}
	return serverConfig(pool, cert, allowEdges), nil
}

// LoadClient builds the edge's TLS config: TLS 1.3 only, the core's certificate must
// come from the CA with role core. tunnel.Dial sets ServerName from the address dialled.
func LoadClient(caFile, certFile, keyFile string) (*tls.Config, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load edge certificate %s: %w", certFile, err)
	}
	if err := checkOwn(cert, RoleEdge, certFile); err != nil {
		return nil, err
	}
	return clientConfig(pool, cert), nil
}

// Ephemeral is an in-memory CA with one core and one edge certificate, for the demo and tests.
type Ephemeral struct {
	Server, Client *tls.Config
}

// NewEphemeral makes a fresh CA, a core certificate for hosts (default: localhost and
// the loopback addresses) and an edge certificate.
func NewEphemeral(hosts []string) (*Ephemeral, error) {
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	ca, err := newCA(0)
	if err != nil {
		return nil, err
	}
	coreKP, err := ca.issue("core", RoleCore, hosts, 0, nil)
	if err != nil {
		return nil, err
	}
	edgeKP, err := ca.issue("edge", RoleEdge, nil, 0, nil)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	toTLS := func(kp *keyPair) tls.Certificate {
		return tls.Certificate{Certificate: [][]byte{kp.der}, PrivateKey: kp.key, Leaf: kp.cert}
	}
	return &Ephemeral{Server: serverConfig(pool, toTLS(coreKP), nil), Client: clientConfig(pool, toTLS(edgeKP))}, nil
}

// PeerName is the common name of the verified peer certificate.
func PeerName(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	return cs.PeerCertificates[0].Subject.CommonName
}
