// Package logfmt makes the broker's JSON log lines readable by the usual JSON
// tools. slog's JSON handler writes a net.Addr as an object ({"IP":"…","Port":…}),
// a duration as integer nanoseconds, and a 64-bit integer as a JSON number, which
// jq, JavaScript and many log pipelines read as a float64 and round past 2^53: an
// edge session ID or a core epoch would change its value on the way.
//
// ReplaceAttr, given to slog.HandlerOptions, renders
//   - every net.Addr (and anything else whose value is a net.Addr) as its String(),
//     "10.0.0.1:443";
//   - every time.Duration as Go's duration string, "1.5s", "2m0s", "250ms";
//   - every uint64 as a decimal string (the broker's IDs, epochs, sequence
//     numbers and cursors are uint64: one type per field whatever its value), and
//     an int64 beyond ±2^53 as a decimal string too (smaller ints, the counts,
//     stay numbers).
//
// The text handler needs none of this: it prints these already as above.
package logfmt

import (
	"log/slog"
	"net"
	"strconv"
)

// maxExact is the largest integer a float64 holds exactly.
const maxExact = 1 << 53

// ReplaceAttr is a slog.HandlerOptions.ReplaceAttr for the JSON handler (see the
// package comment). It leaves the built-in keys (time, level, msg, source) alone.
func ReplaceAttr(groups []string, a slog.Attr) slog.Attr {
	v := a.Value
	switch v.Kind() {
	case slog.KindDuration:
		return slog.String(a.Key, v.Duration().String())
	case slog.KindUint64:
		return slog.String(a.Key, strconv.FormatUint(v.Uint64(), 10))
	case slog.KindInt64:
		if n := v.Int64(); n > maxExact || n < -maxExact {
			return slog.String(a.Key, strconv.FormatInt(n, 10))
		}
	case slog.KindAny:
		switch x := v.Any().(type) {
		case net.Addr:
			if isNil(x) {
				return slog.String(a.Key, "")
			}
			return slog.String(a.Key, x.String())
		}
	}
	return a
}

// isNil catches a typed nil pointer inside the interface (a *net.UDPAddr that is
// nil), whose String would still work but say "<nil>".
func isNil(a net.Addr) bool {
	switch x := a.(type) {
	case *net.UDPAddr:
		return x == nil
	case *net.TCPAddr:
		return x == nil
	case *net.IPAddr:
		return x == nil
	case *net.UnixAddr:
		return x == nil
	}
	return false
}

// JSONOptions are the handler options for the broker's JSON logs at level.
func JSONOptions(level slog.Leveler) *slog.HandlerOptions {
	return &slog.HandlerOptions{Level: level, ReplaceAttr: ReplaceAttr}
}
