// Package setting checks edge and core settings once, at start. A bad value is
// refused with one error naming the setting as the operator types it, the value,
// and what is allowed, instead of panicking deep inside (a negative channel size) or
// being taken silently (a negative timeout that expires everything at once).
//
// Each package's Validate is a table of Checks, one line per setting, evaluated after
// its Defaults: a 0 that Defaults replaces never reaches a check.
package setting

import (
	"errors"
	"fmt"
	"time"

	"github.com/salt-broker/salt-broker/tunnel"
)

// MaxMessageSize is the largest --max-message-size allowed. A tunnel record carries
// a 32-bit length and a message plus its envelope must fit in one; each side also
// holds a whole message in memory, so a bound far below 4 GiB is kept.
const MaxMessageSize = 1 << 30

// Error is a setting refused at start. cmd/broker tells it from other failures
// (it exits 2, a usage error).
type Error struct {
	Name  string // the flag ("--max-in-flight"), or the Config field no flag sets
	Value string // as given
	Rule  string // what is allowed
}

func (e *Error) Error() string { return fmt.Sprintf("%s %s: %s", e.Name, e.Value, e.Rule) }

// IsError reports whether err is, or wraps, a refused setting.
func IsError(err error) bool {
	var se *Error
	return errors.As(err, &se)
}

// Check is one row of a validation table: a setting, its value and whether the
// value is allowed.
type Check struct {
	name  string
	value any
	ok    bool
	rule  string
}

// First returns the first failed check as an *Error, or nil: one line for the
// operator, as quic-go's validateConfig does, rather than a list.
func First(checks ...[]Check) error {
	for _, cs := range checks {
		for _, c := range cs {
			if !c.ok {
				return &Error{Name: c.name, Value: fmt.Sprint(c.value), Rule: c.rule}
			}
		}
	}
	return nil
}

// Number is what the checks compare.
type Number interface {
	~int | ~int64 | ~uint64
}

// If is a check with its own rule.
func If(name string, value any, ok bool, rule string) Check {
	return Check{name: name, value: value, ok: ok, rule: rule}
}

// AtLeast allows min and above.
func AtLeast[T Number](name string, v, min T) Check {
	return If(name, v, v >= min, fmt.Sprintf("must be at least %v", min))
}

// Between allows lo to hi, both included.
func Between[T Number](name string, v, lo, hi T) Check {
	return If(name, v, v >= lo && v <= hi, fmt.Sprintf("must be between %v and %v", lo, hi))
}

// Port allows a TCP or UDP port number.
func Port(name string, v int) Check { return Between(name, v, 1, 65535) }

// Positive allows a duration above zero.
func Positive(name string, d time.Duration) Check {
	return If(name, d, d > 0, "must be more than 0")
}

// NotNegative allows 0 and above; the caller's rule says what 0 means.
func NotNegative[T Number](name string, v T, zero string) Check {
	return If(name, v, v >= 0, "must be 0 or more (0: "+zero+")")
}

// Tunnel checks the tunnel settings of an edge or core, named under prefix
// ("edge.Config.Tunnel"). No flag sets them today; 0 is the tunnel's default.
func Tunnel(prefix string, c tunnel.Config) []Check {
	return []Check{
		NotNegative(prefix+".KeepAlivePeriod", c.KeepAlivePeriod, "the default"),
		NotNegative(prefix+".IdleTimeout", c.IdleTimeout, "the default"),
		NotNegative(prefix+".HandshakeTimeout", c.HandshakeTimeout, "the default"),
		NotNegative(prefix+".MaxIncomingStreams", c.MaxIncomingStreams, "the default"),
		// A keep-alive that is not well inside the idle timeout lets an idle but
		// healthy link close itself (and smux refuses the pair outright).
		If(prefix+".KeepAlivePeriod", c.KeepAlivePeriod,
			c.KeepAlivePeriod == 0 || c.IdleTimeout == 0 || c.KeepAlivePeriod < c.IdleTimeout,
			fmt.Sprintf("must be less than %s.IdleTimeout (%v)", prefix, c.IdleTimeout)),
	}
}
