package zmtp

import (
	"bufio"
	"bytes"
	"net"
	"testing"
	"time"
)

// FuzzGreeting feeds arbitrary bytes to the server's handshake, as a peer would:
// it must refuse or accept without panicking.
func FuzzGreeting(f *testing.F) {
	g := greeting()
	g[32] = 0
	f.Add(g)
	f.Add(append(append([]byte{}, g...), 0x04, 25, 5, 'R', 'E', 'A', 'D', 'Y', 11, 'S', 'o', 'c', 'k', 'e', 't', '-', 'T', 'y', 'p', 'e', 0, 0, 0, 3, 'R', 'E', 'Q'))
	f.Add([]byte{0x01, 0x00})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := parseGreeting(data); err == nil && len(data) < greetingLen {
			t.Fatal("short greeting accepted")
		}
		_, _ = parseProperties(data)
		_, _, _ = parseCommand(data)

		s := &server{kind: kindRouter, opts: Options{}.withDefaults(kindRouter)}
		c := &memConn{r: bytes.NewReader(data)}
		props, err := s.handshake(c, bufio.NewReaderSize(c, 4096))
		if err == nil && !s.kind.accepts(string(props["Socket-Type"])) {
			t.Fatalf("handshake accepted socket type %q", props["Socket-Type"])
		}
	})
}

// memConn is a net.Conn whose peer has already sent everything it will send.
type memConn struct {
	net.Conn
	r *bytes.Reader
}

func (c *memConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *memConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }

// FuzzFrameDecoder reads arbitrary bytes as frames: no panic, and no message over
// the limit is ever returned.
func FuzzFrameDecoder(f *testing.F) {
	f.Add([]byte{0x00, 0x03, 'a', 'b', 'c'})
	f.Add([]byte{0x01, 0x00, 0x00, 0x05, 'h', 'e', 'l', 'l', 'o'})
	f.Add([]byte{0x02, 0x40, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0x04, 0x06, 4, 'P', 'I', 'N', 'G', 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 1 << 16
		fr := frameReader{r: bufio.NewReader(bytes.NewReader(data)), maxMessage: max}
		for i := 0; i < 64; i++ {
			frames, _, err := fr.readMessage()
			if err != nil {
				return
			}
			n := 0
			for _, f := range frames {
				n += len(f)
			}
			if n > max {
				t.Fatalf("message of %d bytes passed a %d limit", n, max)
			}
		}
	})
}
