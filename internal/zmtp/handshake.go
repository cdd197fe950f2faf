package zmtp

import (
	"bufio"
	"errors"
	"io"
	"net"
	"time"
)

// readyMax is the largest READY command accepted from a peer: its metadata is a
// socket type and an identity, so anything near this is not a ZeroMQ peer.
const readyMax = 64 << 10

// handshake exchanges greetings and READY within the handshake deadline.
func (s *server) handshake(c net.Conn, br *bufio.Reader) (map[string][]byte, error) {
	_ = c.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(greeting()); err != nil {
		return nil, err
	}
	g := make([]byte, greetingLen)
	// The first byte tells ZMTP 3 (0xFF) from ZMTP 1.0 or a foreign protocol, and
	// bytes 0-9 from ZMTP 2.0: refuse at once, as libzmq does, without waiting for more.
	if _, err := io.ReadFull(br, g[:1]); err != nil {
		return nil, err
	}
	if g[0] != 0xff {
		return nil, hsErr(causeBadGreeting, "not a ZMTP 3 greeting (ZMTP 1.0/2.0 peers, libzmq < 4, are not supported; or not ZeroMQ at all)")
	}
	if _, err := io.ReadFull(br, g[1:10]); err != nil {
		return nil, err
	}
	if g[9]&0x01 == 0 {
		return nil, hsErr(causeBadGreeting, "not a ZMTP 3 greeting (ZMTP 1.0/2.0 peers, libzmq < 4, are not supported; or not ZeroMQ at all)")
	}
	// A ZMTP 2.0 peer sends its revision byte and waits: refuse it on that byte
	// rather than waiting out the handshake timeout for a 64-byte greeting.
	if _, err := io.ReadFull(br, g[10:11]); err != nil {
		return nil, err
	}
	if g[10] < 3 {
		return nil, hsErr(causeBadVersion, "ZMTP revision %d peer: only ZMTP 3.x is supported (upgrade the peer's libzmq to 4.x)", g[10])
	}
	if _, err := io.ReadFull(br, g[11:]); err != nil {
		return nil, err
	}
	if _, err := parseGreeting(g); err != nil {
		return nil, err
	}
	ready := readyBody(map[string][]byte{"Socket-Type": []byte(s.kind.socketType())})
	bw := bufio.NewWriterSize(c, 64)
	if err := writeMessage(bw, [][]byte{ready}, true); err != nil {
		return nil, err
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	fr := frameReader{r: br, maxMessage: readyMax}
	frames, isCmd, err := fr.readMessage()
	if err != nil {
		if errors.Is(err, errTooBig) {
			return nil, hsErr(causeBadReady, "READY command too large: %v", err)
		}
		return nil, err
	}
	if !isCmd {
		return nil, hsErr(causeBadReady, "expected READY, got a data frame")
	}
	name, data, err := parseCommand(frames[0])
	if err != nil {
		return nil, hsErr(causeBadReady, "%v", err)
	}
	if name == "ERROR" {
		return nil, hsErr(causeBadReady, "peer sent ERROR: %q", data)
	}
	if name != "READY" {
		return nil, hsErr(causeBadReady, "expected READY, got %q", name)
	}
	props, err := parseProperties(data)
	if err != nil {
		return nil, hsErr(causeBadReady, "%v", err)
	}
	if st := string(props["Socket-Type"]); !s.kind.accepts(st) {
		return nil, hsErr(causeBadSocketType, "a %s socket cannot talk to %s (wrong port?)", st, s.kind.socketType())
	}
	if len(props["Identity"]) > 255 {
		return nil, hsErr(causeBadReady, "identity longer than 255 bytes")
	}
	return props, nil
}
