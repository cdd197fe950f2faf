package certs

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ExpiryMetric is the gauge of every certificate a side runs with: its own and each
// CA it trusts. deploy/prometheus/alerts.yml alerts on it by this name.
const ExpiryMetric = "salt_broker_certificate_expiry_timestamp_seconds"

// ExpiryWarning is how long before a certificate's end the daily warning starts.
const ExpiryWarning = 30 * 24 * time.Hour

// RoleCA labels the CA certificates in the expiry metric.
const RoleCA Role = "ca"

var expiryDesc = prometheus.NewDesc(ExpiryMetric,
	"When each certificate this side runs with stops being valid (its not-after), as a Unix time: role core or edge for this side's own, ca for each CA it trusts. Follows reloads (SIGHUP).",
	[]string{"role", "name"}, nil)

// expiring is one certificate the side depends on.
type expiring struct {
	role Role
	name string // unique within role
	file string
	cert *x509.Certificate
}

// watched lists this side's certificate and its CAs. Two CAs of one name (a bundle
// of CAs made the same day) get their fingerprint's start appended, so the metric
// keeps one series per certificate.
func (s *Store) watched() []expiring {
	m := s.cur.Load()
	out := []expiring{{role: s.role, name: m.cert.Leaf.Subject.CommonName, file: m.src.Cert, cert: m.cert.Leaf}}
	seen := map[string]int{}
	for _, c := range m.cas {
		seen[c.Subject.CommonName]++
	}
	for _, c := range m.cas {
		name := c.Subject.CommonName
		if seen[name] > 1 {
			name = fmt.Sprintf("%s (%s)", name, Fingerprint(c)[:11])
		}
		out = append(out, expiring{role: RoleCA, name: name, file: m.src.CA, cert: c})
	}
	return out
}

type expiryCollector struct{ s *Store }

func (e expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- expiryDesc }

func (e expiryCollector) Collect(ch chan<- prometheus.Metric) {
	for _, w := range e.s.watched() {
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, float64(w.cert.NotAfter.Unix()), string(w.role), w.name)
	}
}

// RegisterExpiry exports ExpiryMetric for the store's current material on reg: it
// is read at each scrape, so a reload shows at once and a CA removed from the
// bundle leaves no stale series.
func RegisterExpiry(reg prometheus.Registerer, s *Store) error {
	if err := reg.Register(expiryCollector{s}); err != nil {
		return fmt.Errorf("register %s: %w", ExpiryMetric, err)
	}
	return nil
}

// WarnExpiry logs a WARN for each certificate of the store within ExpiryWarning of
// its end (an ERROR once it is past it) and returns how many it logged.
func (s *Store) WarnExpiry(log *slog.Logger) int { return s.warnExpiry(log, time.Now()) }

func (s *Store) warnExpiry(log *slog.Logger, now time.Time) int {
	n := 0
	for _, w := range s.watched() {
		left := w.cert.NotAfter.Sub(now)
		attrs := []any{"role", w.role, "name", w.name, "file", w.file, "not_after", w.cert.NotAfter.UTC().Format(time.RFC3339)}
		hint := "renew it ('broker certs renew', docs/operations.md#certificates) and send SIGHUP"
		if w.role == RoleCA {
			hint = "roll the CA over: a new CA beside this one in the --ca bundle, then new certificates from it (docs/operations.md#certificates)"
		}
		switch {
		case left <= 0:
			log.Error("certificate expired: peers refuse it", append(attrs, "expired_days_ago", int(-left.Hours()/24), "hint", hint)...)
		case left <= ExpiryWarning:
			log.Warn("certificate expires soon", append(attrs, "days_left", int(left.Hours()/24), "hint", hint)...)
		default:
			continue
		}
		n++
	}
	return n
}

// WatchExpiry warns (WarnExpiry) now and then once a day until ctx ends.
func (s *Store) WatchExpiry(ctx context.Context, log *slog.Logger) {
	s.watchExpiry(ctx, log, 24*time.Hour, time.Now)
}

func (s *Store) watchExpiry(ctx context.Context, log *slog.Logger, every time.Duration, now func() time.Time) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s.warnExpiry(log, now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
