package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Show writes what file holds, in an operator's terms: each certificate's subject,
// role, hosts, SHA-256 fingerprint, validity and days left; a CA bundle or chain
// says so; a key file says it is a key and which certificate beside it matches.
func Show(w io.Writer, file string, now time.Time) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	var certs []*x509.Certificate
	var keys []*pem.Block
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		switch {
		case blk.Type == "CERTIFICATE":
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return fmt.Errorf("%s: certificate %d: %w", file, len(certs)+1, err)
			}
			certs = append(certs, c)
		case strings.Contains(blk.Type, "PRIVATE KEY"):
			keys = append(keys, blk)
		default:
			fmt.Fprintf(w, "%s: a PEM block of type %q, which salt-broker does not use\n", file, blk.Type)
		}
	}
	if len(certs) == 0 && len(keys) == 0 {
		return fmt.Errorf("%s holds no PEM certificate or private key (is it DER? 'openssl x509 -inform der' converts it)", file)
	}
	for _, k := range keys {
		fmt.Fprintf(w, "%s: a private key (%s), not a certificate: keep it 0600 and never copy it off its host\n", file, describeKey(k))
		if match := matchingCert(file, k); match != "" {
			fmt.Fprintf(w, "  its certificate: %s\n", match)
		}
	}
	switch {
	case len(certs) > 1 && allCA(certs):
		fmt.Fprintf(w, "%s: a CA bundle of %d certificates (all are trusted, as during a CA rollover)\n", file, len(certs))
	case len(certs) > 1:
		fmt.Fprintf(w, "%s: a chain of %d certificates, leaf first\n", file, len(certs))
	case len(certs) == 1:
		fmt.Fprintf(w, "%s: one certificate\n", file)
	}
	for i, c := range certs {
		if len(certs) > 1 {
			fmt.Fprintf(w, "certificate %d:\n", i+1)
		}
		describeCert(w, c, now)
	}
	return nil
}

func allCA(cs []*x509.Certificate) bool {
	for _, c := range cs {
		if !c.IsCA {
			return false
		}
	}
	return true
}

func describeCert(w io.Writer, c *x509.Certificate, now time.Time) {
	role := string(roleOf(c))
	switch {
	case c.IsCA:
		role = "CA (signs edge and core certificates)"
	case role == "":
		role = "none: not a salt-broker certificate (no edge or core role)"
	}
	var hosts []string
	hosts = append(hosts, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		hosts = append(hosts, ip.String())
	}
	hostsText := strings.Join(hosts, ", ")
	if hostsText == "" {
		hostsText = "-"
	}
	left := c.NotAfter.Sub(now)
	var status string
	switch {
	case now.Before(c.NotBefore):
		status = "NOT YET VALID"
	case left <= 0:
		status = fmt.Sprintf("EXPIRED %d days ago", int(-left.Hours()/24))
	case left <= ExpiryWarning:
		status = fmt.Sprintf("%d days left: renew it now", int(left.Hours()/24))
	default:
		status = fmt.Sprintf("%d days left", int(left.Hours()/24))
	}
	fmt.Fprintf(w, "  subject:     %s\n", c.Subject)
	fmt.Fprintf(w, "  role:        %s\n", role)
	fmt.Fprintf(w, "  hosts:       %s\n", hostsText)
	fmt.Fprintf(w, "  issuer:      %s\n", c.Issuer)
	fmt.Fprintf(w, "  serial:      %x\n", c.SerialNumber)
	fmt.Fprintf(w, "  fingerprint: SHA-256 %s\n", Fingerprint(c))
	fmt.Fprintf(w, "  not before:  %s\n", c.NotBefore.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "  not after:   %s (%s)\n", c.NotAfter.UTC().Format(time.RFC3339), status)
}

func parseKey(blk *pem.Block) (any, error) {
	if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	return x509.ParsePKCS1PrivateKey(blk.Bytes)
}

func describeKey(blk *pem.Block) string {
	k, err := parseKey(blk)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PrivateKey:
		return fmt.Sprintf("RSA %d bits", k.N.BitLen())
	case ed25519.PrivateKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", k)
}

// matchingCert names the certificate beside a key file (NAME.crt for NAME.key)
// when its public key is the key's.
func matchingCert(keyFile string, blk *pem.Block) string {
	k, err := parseKey(blk)
	if err != nil {
		return ""
	}
	pub, ok := k.(crypto.Signer)
	if !ok {
		return ""
	}
	crt := strings.TrimSuffix(keyFile, filepath.Ext(keyFile)) + ".crt"
	b, err := os.ReadFile(crt)
	if err != nil {
		return ""
	}
	blkC, _ := pem.Decode(b)
	if blkC == nil {
		return ""
	}
	c, err := x509.ParseCertificate(blkC.Bytes)
	if err != nil {
		return ""
	}
	eq, ok := pub.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return ""
	}
	if eq.Equal(c.PublicKey) {
		return fmt.Sprintf("%s (%q, SHA-256 %s)", crt, c.Subject.CommonName, Fingerprint(c))
	}
	return fmt.Sprintf("NOT %s: that certificate has another public key (a renewal half done?)", crt)
}
