package zmtp

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Wire format of ZMTP 3.0 (RFC 23) and 3.1 (RFC 37), NULL mechanism only.

const (
	greetingLen = 64
	flagMore    = 0x01
	flagLong    = 0x02
	flagCommand = 0x04
	// frameOverhead is what each frame costs against MaxMessageSize besides its bytes,
	// so a message of a million empty frames is as bounded as one large frame.
	frameOverhead = 16
)

// handshake failure causes, also the Stats keys.
const (
	causeTimeout       = "timeout"
	causeBadGreeting   = "bad_greeting"
	causeBadVersion    = "bad_version"
	causeBadMechanism  = "bad_mechanism"
	causeBadReady      = "bad_ready"
	causeBadSocketType = "bad_socket_type"
	causeClosed        = "closed"
)

type handshakeError struct {
	cause string
	msg   string
}

func (e *handshakeError) Error() string { return e.msg }

func hsErr(cause, format string, args ...any) error {
	return &handshakeError{cause: cause, msg: fmt.Sprintf(format, args...)}
}

// greeting is our ZMTP 3.1 greeting: signature, version 3.1, NULL, as-server.
func greeting() []byte {
	g := make([]byte, greetingLen)
	g[0], g[9] = 0xff, 0x7f
	g[10], g[11] = 3, 1
	copy(g[12:32], "NULL")
	g[32] = 1
	return g
}

// parseGreeting checks a peer's 64-byte greeting.
func parseGreeting(g []byte) (minor byte, err error) {
	if len(g) < greetingLen {
		return 0, hsErr(causeBadGreeting, "short greeting (%d bytes)", len(g))
	}
	if g[0] != 0xff || g[9]&0x01 == 0 {
		return 0, hsErr(causeBadGreeting, "not a ZMTP 3 greeting (ZMTP 1.0/2.0 peers, libzmq < 4, are not supported; or not ZeroMQ at all)")
	}
	if g[10] < 3 {
		return 0, hsErr(causeBadVersion, "ZMTP %d.%d peer: only ZMTP 3.x is supported (upgrade the peer's libzmq to 4.x)", g[10], g[11])
	}
	mech := string(bytes.TrimRight(g[12:32], "\x00"))
	if mech != "NULL" {
		return 0, hsErr(causeBadMechanism, "security mechanism %q: only NULL is supported (Salt encrypts its own payloads); configure the peer without CURVE or PLAIN", mech)
	}
	return g[11], nil
}

// command builds a command frame body: name length, name, data.
func command(name string, data []byte) []byte {
	b := make([]byte, 0, 1+len(name)+len(data))
	b = append(b, byte(len(name)))
	b = append(b, name...)
	return append(b, data...)
}

// readyBody builds a READY command body with the given properties.
func readyBody(props map[string][]byte) []byte {
	var data []byte
	for _, k := range []string{"Socket-Type", "Identity"} {
		v, ok := props[k]
		if !ok {
			continue
		}
		data = append(data, byte(len(k)))
		data = append(data, k...)
		data = binary.BigEndian.AppendUint32(data, uint32(len(v)))
		data = append(data, v...)
	}
	return command("READY", data)
}

// parseCommand splits a command frame body into name and data.
func parseCommand(b []byte) (name string, data []byte, err error) {
	if len(b) < 1 || int(b[0]) > len(b)-1 || b[0] == 0 {
		return "", nil, errors.New("malformed command frame")
	}
	n := int(b[0])
	return string(b[1 : 1+n]), b[1+n:], nil
}

// parseProperties reads READY metadata.
func parseProperties(b []byte) (map[string][]byte, error) {
	props := map[string][]byte{}
	for len(b) > 0 {
		n := int(b[0])
		if n == 0 || len(b) < 1+n+4 {
			return nil, errors.New("malformed READY property")
		}
		name := string(b[1 : 1+n])
		b = b[1+n:]
		vl := binary.BigEndian.Uint32(b)
		b = b[4:]
		if uint64(vl) > uint64(len(b)) {
			return nil, errors.New("READY property value runs past the frame")
		}
		props[name] = b[:vl]
		b = b[vl:]
	}
	return props, nil
}

// frameReader decodes frames, refusing any frame or message over the limit before
// allocating for it.
type frameReader struct {
	r          *bufio.Reader
	maxMessage int64
}

var errTooBig = errors.New("message exceeds the maximum size")

// readFrame reads one frame. budget is what is left of the message's size limit.
func (fr *frameReader) readFrame(budget int64) (flags byte, body []byte, err error) {
	flags, err = fr.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	if flags&^(flagMore|flagLong|flagCommand) != 0 {
		return 0, nil, fmt.Errorf("reserved frame flag bits set (0x%02x)", flags)
	}
	var size uint64
	if flags&flagLong != 0 {
		var b [8]byte
		if _, err := io.ReadFull(fr.r, b[:]); err != nil {
			return 0, nil, noEOF(err)
		}
		size = binary.BigEndian.Uint64(b[:])
	} else {
		b, err := fr.r.ReadByte()
		if err != nil {
			return 0, nil, noEOF(err)
		}
		size = uint64(b)
	}
	if size+frameOverhead > uint64(budget) || size > uint64(fr.maxMessage) {
		return 0, nil, fmt.Errorf("frame of %d bytes: %w (%d)", size, errTooBig, fr.maxMessage)
	}
	body, err = readBody(fr.r, int(size))
	if err != nil {
		return 0, nil, noEOF(err)
	}
	return flags, body, nil
}

// eagerAlloc is the largest frame body allocated in full before its bytes arrive.
const eagerAlloc = 64 << 10

// readBody reads a body of size bytes. Above eagerAlloc the buffer grows only as
// bytes actually arrive: a peer that announces a large (but allowed) frame and then
// goes quiet costs what it sent, not what it announced, so thousands of such peers
// cannot exhaust memory.
func readBody(r io.Reader, size int) ([]byte, error) {
	if size <= eagerAlloc {
		b := make([]byte, size)
		_, err := io.ReadFull(r, b)
		return b, err
	}
	b := make([]byte, eagerAlloc)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	for len(b) < size {
		n := min(size, 2*len(b))
		grown := make([]byte, n)
		copy(grown, b)
		if _, err := io.ReadFull(r, grown[len(b):]); err != nil {
			return nil, err
		}
		b = grown
	}
	return b, nil
}

// readMessage reads frames until one without MORE. A command frame is returned alone.
func (fr *frameReader) readMessage() (frames [][]byte, isCommand bool, err error) {
	budget := fr.maxMessage + frameOverhead
	for {
		flags, body, err := fr.readFrame(budget)
		if err != nil {
			return nil, false, err
		}
		if flags&flagCommand != 0 {
			if len(frames) > 0 {
				return nil, false, errors.New("command frame inside a multipart message")
			}
			return [][]byte{body}, true, nil
		}
		frames = append(frames, body)
		budget -= int64(len(body)) + frameOverhead
		if flags&flagMore == 0 {
			return frames, false, nil
		}
	}
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendFrameHeader appends a frame header.
func appendFrameHeader(b []byte, flags byte, size int) []byte {
	if size > 255 {
		b = append(b, flags|flagLong)
		return binary.BigEndian.AppendUint64(b, uint64(size))
	}
	return append(b, flags, byte(size))
}

// writeMessage writes frames (or one command) to w.
func writeMessage(w *bufio.Writer, frames [][]byte, isCommand bool) error {
	var hdr [9]byte
	for i, f := range frames {
		var flags byte
		if isCommand {
			flags = flagCommand
		} else if i < len(frames)-1 {
			flags = flagMore
		}
		if _, err := w.Write(appendFrameHeader(hdr[:0], flags, len(f))); err != nil {
			return err
		}
		if _, err := w.Write(f); err != nil {
			return err
		}
	}
	return nil
}
