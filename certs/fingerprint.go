package certs

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// Fingerprint is the SHA-256 of a certificate's DER, the name --deny-edge takes:
// two certificates issued to one name (a renewal, a stolen key re-issued) share
// the name but never the fingerprint.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return formatFingerprint(sum[:])
}

// formatFingerprint writes it as openssl x509 -fingerprint -sha256 does
// (AB:CD:…), so an operator can compare the two by eye.
func formatFingerprint(sum []byte) string {
	var b strings.Builder
	for i, c := range sum {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", c)
	}
	return b.String()
}

// parseFingerprint accepts what an operator copies: AB:CD:…, abcd…, with a
// "sha256:" or openssl's "SHA256 Fingerprint=" in front. ok is false for anything
// that is not 32 bytes of hex once those are removed.
func parseFingerprint(s string) (string, bool) {
	s = strings.TrimSpace(s)
	low := strings.ToLower(s)
	for _, p := range []string{"sha256 fingerprint=", "sha2-256:", "sha256:", "sha256="} {
		if strings.HasPrefix(low, p) {
			s = s[len(p):]
			break
		}
	}
	s = strings.NewReplacer(":", "", " ", "").Replace(s)
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		return "", false
	}
	return formatFingerprint(b), true
}

// parseDeny reads --deny-edge: each value is a fingerprint or a file of them (one
// a line, # comments), read again at every reload so that revoking an edge is
// one line added to a file and a SIGHUP.
func parseDeny(values []string) (map[string]bool, error) {
	deny := map[string]bool{}
	for _, v := range values {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if fp, ok := parseFingerprint(v); ok {
			deny[fp] = true
			continue
		}
		b, err := os.ReadFile(v)
		if err != nil {
			return nil, fmt.Errorf("--deny-edge %q: neither a SHA-256 fingerprint (64 hex digits, as 'broker certs show' prints) nor a readable file: %w", v, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for n := 1; sc.Scan(); n++ {
			line := sc.Text()
			if i := strings.IndexByte(line, '#'); i >= 0 {
				line = line[:i]
			}
			if strings.TrimSpace(line) == "" {
				continue
			}
			fp, ok := parseFingerprint(line)
			if !ok {
				return nil, fmt.Errorf("--deny-edge file %s line %d: %q is not a SHA-256 fingerprint (64 hex digits, as 'broker certs show' prints)", v, n, strings.TrimSpace(line))
			}
			deny[fp] = true
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("--deny-edge file %s: %w", v, err)
		}
	}
	return deny, nil
}
