package certs

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// RenewOptions tune Renew.
type RenewOptions struct {
	// From is the certificate to renew; default DIR/NAME.crt. During a CA rollover
	// it is the certificate issued by the old CA, renewed by the new CA in DIR.
	From string
	// Days of validity; 0: DefaultLeafDays.
	Days int
	// KeepKey signs the existing key (beside From) again instead of a new one. The
	// default is a new key: a renewal is the routine moment to retire a key, and a
	// key that leaked unnoticed (a backup, a disk gone for repair) would otherwise
	// live on in the new certificate. Keep it where the key is provisioned apart
	// from the certificate.
	KeepKey bool
}

// Renewed says what Renew did.
type Renewed struct {
	Role           Role
	Hosts          []string
	Cert, Key      string // files written
	Backup         string // where the previous certificate went ("" when there was none in DIR)
	OldFingerprint string
	NewFingerprint string
	KeptKey        bool
	NotAfter       string // of the new certificate, RFC 3339
}

// Renew issues DIR/NAME.crt again from the CA in DIR with the role and hosts of the
// existing certificate (From, default DIR/NAME.crt), and a new key unless KeepKey.
// The previous DIR/NAME.crt and .key are kept as .old; each file is replaced by a
// rename, so a reload never reads half a file.
func Renew(dir, name string, o RenewOptions) (Renewed, error) {
	if err := checkName(name); err != nil {
		return Renewed{}, err
	}
	if o.Days < 0 {
		return Renewed{}, fmt.Errorf("--days %d: must be at least 1", o.Days)
	}
	from := o.From
	if from == "" {
		from = filepath.Join(dir, name+".crt")
	}
	old, err := readLeaf(from)
	if err != nil {
		return Renewed{}, err
	}
	if old.Subject.CommonName != name {
		return Renewed{}, fmt.Errorf("%s is the certificate of %q, not %q: renew keeps the name; use 'broker certs issue' for a new one", from, old.Subject.CommonName, name)
	}
	role := roleOf(old)
	if role != RoleCore && role != RoleEdge {
		return Renewed{}, fmt.Errorf("%s has no edge or core role: not a certificate 'broker certs issue' made", from)
	}
	var hosts []string
	hosts = append(hosts, old.DNSNames...)
	for _, ip := range old.IPAddresses {
		hosts = append(hosts, ip.String())
	}
	ca, err := loadCA(dir)
	if err != nil {
		return Renewed{}, err
	}
	var key *ecdsa.PrivateKey
	if o.KeepKey {
		keyFile := strings.TrimSuffix(from, filepath.Ext(from)) + ".key"
		pair, err := tls.LoadX509KeyPair(from, keyFile)
		if err != nil {
			return Renewed{}, fmt.Errorf("--keep-key: load the key %s of %s: %w", keyFile, from, err)
		}
		var ok bool
		if key, ok = pair.PrivateKey.(*ecdsa.PrivateKey); !ok {
			return Renewed{}, fmt.Errorf("--keep-key: %s is not an ECDSA key", keyFile)
		}
	}
	kp, err := ca.issue(name, role, hosts, o.Days, key)
	if err != nil {
		return Renewed{}, fmt.Errorf("renew %s certificate %s: %w", role, name, err)
	}
	r := Renewed{Role: role, Hosts: hosts, Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key"),
		OldFingerprint: Fingerprint(old), NewFingerprint: Fingerprint(kp.cert), KeptKey: o.KeepKey,
		NotAfter: kp.cert.NotAfter.UTC().Format("2006-01-02T15:04:05Z")}
	keyDER, err := x509.MarshalPKCS8PrivateKey(kp.key)
	if err != nil {
		return Renewed{}, err
	}
	if _, err := os.Stat(r.Cert); err == nil {
		r.Backup = r.Cert + ".old"
		if err := copyFile(r.Cert, r.Backup, 0o644); err != nil {
			return Renewed{}, err
		}
		if _, err := os.Stat(r.Key); err == nil {
			if err := copyFile(r.Key, r.Key+".old", 0o600); err != nil {
				return Renewed{}, err
			}
		}
	}
	// Key first: a reload between the two renames fails on the mismatched pair and
	// keeps the old material, where the other order could not be told apart.
	if err := replaceFile(r.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return Renewed{}, err
	}
	if err := replaceFile(r.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: kp.der}), 0o644); err != nil {
		return Renewed{}, err
	}
	return r, nil
}

func readLeaf(file string) (*x509.Certificate, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate at its start", file)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", file, err)
	}
	return c, nil
}

func copyFile(from, to string, mode os.FileMode) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("back up %s: %w", from, err)
	}
	if err := replaceFile(to, b, mode); err != nil {
		return fmt.Errorf("back up %s: %w", from, err)
	}
	return nil
}

// replaceFile writes b to path through a temporary file and a rename.
func replaceFile(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), mode)); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
