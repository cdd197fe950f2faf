// Package saltmsg reads the clear outer envelope of a Salt request — just enough to
// treat requests by class (DESIGN §3.4) and to recognise a minion's own retries:
// `enc`, the clear `load.cmd` of auth requests, the clear minion `id` of encrypted
// ones, and the load's length. It never decrypts and never allocates for skipped values.
package saltmsg

import (
	"encoding/binary"
	"errors"
)

// Class is how the broker treats a request.
type Class int

const (
	ClassOther Class = iota // not recognisably Salt: forwarded like an encrypted request
	ClassAuth               // enc clear, load.cmd _auth: idempotent, retried by the minion with identical bytes
	ClassAES                // enc aes: returns, events, file and pillar requests; kept until delivered
	ClassClear              // another clear request
)

func (c Class) String() string {
	switch c {
	case ClassAuth:
		return "auth"
	case ClassAES:
		return "aes"
	case ClassClear:
		return "clear"
	}
	return "other"
}

// Envelope is what the clear envelope says.
type Envelope struct {
	Class   Class
	Enc     string
	Cmd     string // load.cmd of a clear request
	ID      string // minion id: the clear `id` of an AES request, load.id of an auth request
	LoadLen int    // byte length of the load value as encoded
}

var errMalformed = errors.New("not a msgpack map")

const maxDepth = 16

// Parse reads the envelope. A body that is not a msgpack map gives ClassOther and an error.
func Parse(body []byte) (Envelope, error) {
	var env Envelope
	d := decoder{b: body}
	n, ok := d.mapLen()
	if !ok {
		return Envelope{}, errMalformed
	}
	var loadRaw []byte
	for i := 0; i < n; i++ {
		key, ok := d.str()
		if !ok {
			if !d.skipPair() {
				return Envelope{}, errMalformed
			}
			continue
		}
		start := d.p
		switch key {
		case "enc":
			v, ok := d.str()
			if !ok && !d.skip(0) {
				return Envelope{}, errMalformed
			}
			env.Enc = v
		case "id":
			v, ok := d.str()
			if !ok && !d.skip(0) {
				return Envelope{}, errMalformed
			}
			env.ID = v
		default:
			if !d.skip(0) {
				return Envelope{}, errMalformed
			}
			if key == "load" {
				loadRaw = d.b[start:d.p]
				env.LoadLen = len(loadRaw)
			}
		}
	}
	switch env.Enc {
	case "aes":
		env.Class = ClassAES
	case "clear":
		env.Class = ClassClear
		ld := decoder{b: loadRaw}
		if m, ok := ld.mapLen(); ok {
			for i := 0; i < m; i++ {
				key, ok := ld.str()
				if !ok {
					if !ld.skipPair() {
						break
					}
					continue
				}
				switch key {
				case "cmd":
					env.Cmd, _ = ld.str()
				case "id":
					v, ok := ld.str()
					if ok && env.ID == "" {
						env.ID = v
					}
				default:
					if !ld.skip(0) {
						i = m
					}
				}
			}
		}
		if env.Cmd == "_auth" {
			env.Class = ClassAuth
		}
	}
	return env, nil
}

type decoder struct {
	b []byte
	p int
}

func (d *decoder) need(n int) bool { return n >= 0 && len(d.b)-d.p >= n }

func (d *decoder) uint(n int) (int, bool) {
	if !d.need(n) {
		return 0, false
	}
	var v uint64
	switch n {
	case 1:
		v = uint64(d.b[d.p])
	case 2:
		v = uint64(binary.BigEndian.Uint16(d.b[d.p:]))
	case 4:
		v = uint64(binary.BigEndian.Uint32(d.b[d.p:]))
	}
	d.p += n
	if v > uint64(len(d.b)) { // no length in a valid body exceeds the body
		return 0, false
	}
	return int(v), true
}

func (d *decoder) mapLen() (int, bool) {
	if !d.need(1) {
		return 0, false
	}
	c := d.b[d.p]
	switch {
	case c&0xf0 == 0x80:
		d.p++
		return int(c & 0x0f), true
	case c == 0xde:
		d.p++
		return d.uint(2)
	case c == 0xdf:
		d.p++
		return d.uint(4)
	}
	return 0, false
}

// str reads a str or bin value; on another type it consumes nothing.
func (d *decoder) str() (string, bool) {
	if !d.need(1) {
		return "", false
	}
	c := d.b[d.p]
	save := d.p
	var n int
	ok := true
	switch {
	case c&0xe0 == 0xa0:
		d.p++
		n = int(c & 0x1f)
	case c == 0xd9 || c == 0xc4:
		d.p++
		n, ok = d.uint(1)
	case c == 0xda || c == 0xc5:
		d.p++
		n, ok = d.uint(2)
	case c == 0xdb || c == 0xc6:
		d.p++
		n, ok = d.uint(4)
	default:
		return "", false
	}
	if !ok || !d.need(n) {
		d.p = save
		return "", false
	}
	s := string(d.b[d.p : d.p+n])
	d.p += n
	return s, true
}

// skipPair consumes a map entry whose key is not a string: the key, then its value.
func (d *decoder) skipPair() bool {
	if !d.skip(0) {
		return false
	}
	return d.skip(0)
}

// skip consumes one value of any type.
func (d *decoder) skip(depth int) bool {
	if depth > maxDepth || !d.need(1) {
		return false
	}
	c := d.b[d.p]
	d.p++
	fixed := func(n int) bool {
		if !d.need(n) {
			return false
		}
		d.p += n
		return true
	}
	sized := func(lenBytes, extra int) bool {
		n, ok := d.uint(lenBytes)
		return ok && fixed(n+extra)
	}
	items := func(n int, per int) bool {
		for i := 0; i < n*per; i++ {
			if !d.skip(depth + 1) {
				return false
			}
		}
		return true
	}
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return true
	case c&0xf0 == 0x80:
		return items(int(c&0x0f), 2)
	case c&0xf0 == 0x90:
		return items(int(c&0x0f), 1)
	case c&0xe0 == 0xa0:
		return fixed(int(c & 0x1f))
	}
	switch c {
	case 0xcc, 0xd0:
		return fixed(1)
	case 0xcd, 0xd1:
		return fixed(2)
	case 0xce, 0xd2, 0xca:
		return fixed(4)
	case 0xcf, 0xd3, 0xcb:
		return fixed(8)
	case 0xd9, 0xc4:
		return sized(1, 0)
	case 0xda, 0xc5:
		return sized(2, 0)
	case 0xdb, 0xc6:
		return sized(4, 0)
	case 0xd4:
		return fixed(2)
	case 0xd5:
		return fixed(3)
	case 0xd6:
		return fixed(5)
	case 0xd7:
		return fixed(9)
	case 0xd8:
		return fixed(17)
	case 0xc7:
		return sized(1, 1)
	case 0xc8:
		return sized(2, 1)
	case 0xc9:
		return sized(4, 1)
	case 0xdc:
		n, ok := d.uint(2)
		return ok && items(n, 1)
	case 0xdd:
		n, ok := d.uint(4)
		return ok && items(n, 1)
	case 0xde:
		n, ok := d.uint(2)
		return ok && items(n, 2)
	case 0xdf:
		n, ok := d.uint(4)
		return ok && items(n, 2)
	}
	return false
}
