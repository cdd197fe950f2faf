// Package wire is the codec for what edge and core say to each other on tunnel streams:
// ZeroMQ multipart messages and the control records around them.
//
// Every record on a stream is framed as
//
//	type (1 byte) | length (4 bytes, big endian) | body (length bytes)
//
// and a body is a sequence of fixed-width integers, uvarint-prefixed strings and
// multipart messages (uvarint frame count, then uvarint length + bytes per frame).
// A reader refuses any record longer than its configured maximum before allocating,
// so a peer speaking nonsense costs at most one bounded buffer.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version carried in Hello. A core refuses an edge whose
// version differs, with a reject naming both: decoders refuse trailing bytes, so a
// record with a field more does not decode on the other version.
//
//   - 2: Request carries MaxQueueAge.
const Version = 2

// Type identifies a record.
type Type byte

// Record types. The first record on a stream names what the stream is for.
const (
	THello       Type = 'H' // edge → core, first record of the control stream
	THelloAck    Type = 'h' // core → edge
	TReject      Type = 'x' // core → edge: hello refused, with a reason
	TPing        Type = 'p' // edge → core on the control stream
	TPong        Type = 'q' // core → edge
	TAck         Type = 'a' // edge → core: pub cursor re-published
	TSubscribe   Type = 'S' // edge → core: first record of the pub stream; core → edge: where it starts
	TPub         Type = 'P' // core → edge: one numbered publication
	TGap         Type = 'G' // core → edge: publications that can no longer be replayed
	TRequest     Type = 'R' // edge → core, first record of a request stream
	TReply       Type = 'r' // core → edge: the master's reply
	TRefused     Type = 'f' // core → edge: the request will not get a reply
	TDone        Type = 'd' // edge → core: reply received, the core may forget it
	TCancel      Type = 'C' // edge → core, first record of a cancel stream
	TCancelReply Type = 'c' // core → edge
)

func (t Type) String() string {
	switch t {
	case THello:
		return "hello"
	case THelloAck:
		return "hello-ack"
	case TReject:
		return "reject"
	case TPing:
		return "ping"
	case TPong:
		return "pong"
	case TAck:
		return "ack"
	case TSubscribe:
		return "subscribe"
	case TPub:
		return "pub"
	case TGap:
		return "gap"
	case TRequest:
		return "request"
	case TReply:
		return "reply"
	case TRefused:
		return "refused"
	case TDone:
		return "done"
	case TCancel:
		return "cancel"
	case TCancelReply:
		return "cancel-reply"
	}
	return fmt.Sprintf("type(0x%02x)", byte(t))
}

const headerLen = 5

// tooLargePrefix is how much of an oversized record Next returns with ErrTooLarge.
const tooLargePrefix = 16

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ErrTooLarge is returned for a record longer than the reader's maximum, after its
// body was skipped; the stream can go on. Next returns the body's first bytes with it.
var ErrTooLarge = errors.New("record exceeds the maximum size")

// ErrMalformed is returned for a record body that does not decode.
var ErrMalformed = errors.New("malformed record")

// Reader reads records from a stream.
type Reader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

// FrameSlack is what a record may carry beyond its largest ZeroMQ message: the
// record header, the IDs and budgets of a Request or Reply, and the multipart's
// frame count and per-frame lengths. A reader sized MaxMessageSize+FrameSlack takes
// every record an honest peer sends with a message at the limit, and no more.
const FrameSlack = 64 << 10

// readBufferSize is a Reader's buffer: many small records (pings, publications)
// per read from the stream, without holding much per stream.
const readBufferSize = 32 << 10

// NewReader returns a Reader that refuses records larger than max bytes.
func NewReader(r io.Reader, max int) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, readBufferSize), max: max}
}

// Next reads the next record. The returned body is valid until the next call.
// An oversized record is skipped: Next returns its type, its first bytes and ErrTooLarge.
func (r *Reader) Next() (Type, []byte, error) {
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r.r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if int64(n) > int64(r.max) {
		// Skip the body so the stream stays usable, keeping its first bytes: they hold
		// the sequence or request ID, so the caller can say which message it lost.
		prefix := make([]byte, min(int(n), tooLargePrefix))
		if _, err := io.ReadFull(r.r, prefix); err != nil {
			return 0, nil, noEOF(err)
		}
		if _, err := io.CopyN(io.Discard, r.r, int64(n)-int64(len(prefix))); err != nil {
			return 0, nil, noEOF(err)
		}
		return Type(hdr[0]), prefix, fmt.Errorf("%s record of %d bytes (max %d): %w", Type(hdr[0]), n, r.max, ErrTooLarge)
	}
	body, err := r.readBody(int(n))
	if err != nil {
		return 0, nil, noEOF(err)
	}
	return Type(hdr[0]), body, nil
}

// growStep is the most a record's buffer grows before its bytes arrive. A header
// alone may declare up to the maximum (64 MiB); allocating that at once would let
// a peer that trickles a byte now and then pin the memory of every stream it
// opens. The buffer doubles as the body arrives instead, so what is held follows
// what was received.
const growStep = 64 << 10

func (r *Reader) readBody(n int) ([]byte, error) {
	if cap(r.buf) >= n {
		body := r.buf[:n]
		_, err := io.ReadFull(r.r, body)
		return body, err
	}
	body := r.buf[:0]
	for len(body) < n {
		want := min(n, len(body)+max(len(body), growStep))
		if cap(body) < want {
			grown := make([]byte, len(body), want)
			copy(grown, body)
			body = grown
		}
		got := len(body)
		body = body[:want]
		if _, err := io.ReadFull(r.r, body[got:]); err != nil {
			return nil, err
		}
	}
	r.buf = body
	return body, nil
}

// Expect reads the next record and fails unless it has type t.
func (r *Reader) Expect(t Type) ([]byte, error) {
	got, body, err := r.Next()
	if err != nil {
		return nil, err
	}
	if got != t {
		return nil, fmt.Errorf("expected %s record, got %s: %w", t, got, ErrMalformed)
	}
	return body, nil
}

// Append appends a framed record of type t with the given body to dst.
func Append(dst []byte, t Type, body []byte) []byte {
	dst = append(dst, byte(t), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(dst[len(dst)-4:], uint32(len(body)))
	return append(dst, body...)
}

// Write writes one framed record.
func Write(w io.Writer, t Type, body []byte) error {
	_, err := w.Write(Append(make([]byte, 0, headerLen+len(body)), t, body))
	return err
}

// Encoder builds a record body.
type Encoder struct{ b []byte }

// U64 appends a fixed-width unsigned integer.
func (e *Encoder) U64(v uint64) *Encoder { e.b = binary.BigEndian.AppendUint64(e.b, v); return e }

// U32 appends a fixed-width unsigned integer.
func (e *Encoder) U32(v uint32) *Encoder { e.b = binary.BigEndian.AppendUint32(e.b, v); return e }

// Byte appends one byte.
func (e *Encoder) Byte(v byte) *Encoder { e.b = append(e.b, v); return e }

// Bytes appends a length-prefixed byte string.
func (e *Encoder) Bytes(v []byte) *Encoder {
	e.b = binary.AppendUvarint(e.b, uint64(len(v)))
	e.b = append(e.b, v...)
	return e
}

// String appends a length-prefixed string.
func (e *Encoder) String(v string) *Encoder { return e.Bytes([]byte(v)) }

// Multipart appends a ZeroMQ multipart message.
func (e *Encoder) Multipart(frames [][]byte) *Encoder {
	e.b = binary.AppendUvarint(e.b, uint64(len(frames)))
	for _, f := range frames {
		e.Bytes(f)
	}
	return e
}

// Body returns the encoded body.
func (e *Encoder) Body() []byte { return e.b }

// Decoder reads a record body. The first error sticks; check Err once at the end.
type Decoder struct {
	b   []byte
	err error
}

// NewDecoder decodes body.
func NewDecoder(body []byte) *Decoder { return &Decoder{b: body} }

func (d *Decoder) fail() {
	if d.err == nil {
		d.err = ErrMalformed
	}
	d.b = nil
}

// U64 reads a fixed-width unsigned integer.
func (d *Decoder) U64() uint64 {
	if len(d.b) < 8 {
		d.fail()
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

// U32 reads a fixed-width unsigned integer.
func (d *Decoder) U32() uint32 {
	if len(d.b) < 4 {
		d.fail()
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

// Byte reads one byte.
func (d *Decoder) Byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// Bytes reads a length-prefixed byte string. The result aliases the body.
func (d *Decoder) Bytes() []byte {
	n, k := binary.Uvarint(d.b)
	if k <= 0 || n > uint64(len(d.b)-k) {
		d.fail()
		return nil
	}
	v := d.b[k : k+int(n) : k+int(n)]
	d.b = d.b[k+int(n):]
	return v
}

// String reads a length-prefixed string.
func (d *Decoder) String() string { return string(d.Bytes()) }

// Multipart reads a ZeroMQ multipart message. The frames alias the body.
func (d *Decoder) Multipart() [][]byte {
	n, k := binary.Uvarint(d.b)
	// Every frame costs at least one byte of length prefix, which bounds the
	// allocation by the body size whatever the count claims.
	if k <= 0 || n > uint64(len(d.b)-k) {
		d.fail()
		return nil
	}
	d.b = d.b[k:]
	frames := make([][]byte, 0, n)
	for i := uint64(0); i < n && d.err == nil; i++ {
		frames = append(frames, d.Bytes())
	}
	if d.err != nil {
		return nil
	}
	return frames
}

// Err reports the first decoding error, or trailing bytes.
func (d *Decoder) Err() error {
	if d.err == nil && len(d.b) != 0 {
		return fmt.Errorf("%d trailing bytes: %w", len(d.b), ErrMalformed)
	}
	return d.err
}

// CloneFrames copies frames out of a reader's buffer into one allocation.
func CloneFrames(frames [][]byte) [][]byte {
	total := 0
	for _, f := range frames {
		total += len(f)
	}
	buf := make([]byte, 0, total)
	out := make([][]byte, len(frames))
	for i, f := range frames {
		start := len(buf)
		buf = append(buf, f...)
		out[i] = buf[start:len(buf):len(buf)]
	}
	return out
}

// Size is the payload size of a multipart message.
func Size(frames [][]byte) int {
	n := 0
	for _, f := range frames {
		n += len(f)
	}
	return n
}
