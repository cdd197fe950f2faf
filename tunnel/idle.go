package tunnel

import (
	"io"
	"time"
)

// Idle deadlines. An absolute deadline for a whole transfer is one that progress can
// hit: on a slow link, twenty 1 MiB replies sharing it all reach a 30 s deadline
// before any finishes, and are all sent again from byte zero — a livelock. An idle
// deadline cuts only a transfer that stopped moving: it is pushed forward each time
// some bytes went through, so a transfer may take as long as its size needs at the
// link's rate, and a dead one is still cut within the idle timeout of its last byte.

// IdleChunk is how much WriteIdle hands the stream at once: each chunk that goes
// through pushes the deadline forward. Small enough that a chunk crosses a slow,
// shared link well within any sensible idle timeout (64 KiB take 1 s at 512 kbit/s);
// large enough that the extra calls cost nothing on a fast one.
const IdleChunk = 64 << 10

// DeadlineWriter is a writer with a write deadline: a Stream, a net.Conn.
type DeadlineWriter interface {
	io.Writer
	SetWriteDeadline(time.Time) error
}

// DeadlineReader is a reader with a read deadline: a Stream, a net.Conn.
type DeadlineReader interface {
	io.Reader
	SetReadDeadline(time.Time) error
}

// WriteIdle writes p in chunks of IdleChunk, each with a write deadline idle from
// the moment it is handed over: the write fails only when no chunk got through for
// idle, however long the whole takes. It returns the bytes written, as io.Writer.
func WriteIdle(w DeadlineWriter, p []byte, idle time.Duration) (int, error) {
	written := 0
	for written < len(p) {
		chunk := p[written:min(written+IdleChunk, len(p))]
		_ = w.SetWriteDeadline(time.Now().Add(idle))
		n, err := w.Write(chunk)
		written += n
		if err != nil {
			return written, err
		}
		if n < len(chunk) { // a short write without an error breaks io.Writer
			return written, io.ErrShortWrite
		}
	}
	return written, nil
}

// IdleReader reads with a read deadline idle from each Read, so a read fails only
// when no byte arrived for idle. With fromFirstByte, the first byte is waited for
// without one: the caller bounds that wait otherwise (the edge, waiting for a
// reply the master may take minutes to give, by its connection's liveness and
// context); the deadline starts with the transfer.
type IdleReader struct {
	r       DeadlineReader
	idle    time.Duration
	armed   bool
	stopped bool
}

// NewIdleReader wraps r; see IdleReader.
func NewIdleReader(r DeadlineReader, idle time.Duration, fromFirstByte bool) *IdleReader {
	return &IdleReader{r: r, idle: idle, armed: !fromFirstByte}
}

// Stop ends the pushing: later Reads keep whatever deadline the caller sets. For a
// stream whose first record has an idle deadline and later ones their own.
func (r *IdleReader) Stop() { r.stopped = true }

func (r *IdleReader) Read(p []byte) (int, error) {
	if r.armed && !r.stopped {
		_ = r.r.SetReadDeadline(time.Now().Add(r.idle))
	}
	n, err := r.r.Read(p)
	if n > 0 {
		r.armed = true
	}
	return n, err
}

// IdleStream returns st with idle deadlines on both directions: each Write is a
// WriteIdle, and each Read has a deadline idle from its start (from the first byte
// on, with readFromFirstByte; see IdleReader). A stream carrying one transfer each
// way (a request and its reply) needs nothing else.
func IdleStream(st Stream, idle time.Duration, readFromFirstByte bool) Stream {
	return &idleStream{Stream: st, idle: idle, rd: NewIdleReader(st, idle, readFromFirstByte)}
}

type idleStream struct {
	Stream
	idle time.Duration
	rd   *IdleReader
}

func (s *idleStream) Write(p []byte) (int, error) { return WriteIdle(s.Stream, p, s.idle) }
func (s *idleStream) Read(p []byte) (int, error)  { return s.rd.Read(p) }
