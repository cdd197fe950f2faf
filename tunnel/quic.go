package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/quic-go/quic-go"
)

// quic-go's initial receive windows, from which its auto-tuning grows towards
// StreamWindow and ConnWindow: small enough that an idle stream reserves little.
const (
	quicInitialStreamWindow = 1 << 20
	quicInitialConnWindow   = 4 << 20
)

func (c Config) quicConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           c.HandshakeTimeout,
		MaxIdleTimeout:                 c.IdleTimeout,
		KeepAlivePeriod:                c.KeepAlivePeriod,
		InitialStreamReceiveWindow:     quicInitialStreamWindow,
		MaxStreamReceiveWindow:         c.StreamWindow,
		InitialConnectionReceiveWindow: quicInitialConnWindow,
		MaxConnectionReceiveWindow:     c.ConnWindow,
		MaxIncomingStreams:             c.MaxIncomingStreams,
		MaxIncomingUniStreams:          -1,
	}
}

// quicSession adapts a quic-go connection.
type quicSession struct{ c *quic.Conn }

func (s quicSession) OpenStream(ctx context.Context) (Stream, error) {
	st, err := s.c.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return &quicStream{Stream: st}, nil
}

func (s quicSession) AcceptStream(ctx context.Context) (Stream, error) {
	st, err := s.c.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return &quicStream{Stream: st}, nil
}

func (s quicSession) CloseWithError(reason string) error { return s.c.CloseWithError(0, reason) }
func (s quicSession) Context() context.Context           { return s.c.Context() }
func (s quicSession) Transport() string                  { return "quic" }
func (s quicSession) LocalAddr() net.Addr                { return s.c.LocalAddr() }
func (s quicSession) RemoteAddr() net.Addr               { return s.c.RemoteAddr() }
func (s quicSession) PeerName() string                   { return peerName(s.c.ConnectionState().TLS) }

func (s quicSession) Stats() Stats {
	st := s.c.ConnectionStats()
	return Stats{SmoothedRTT: st.SmoothedRTT, MinRTT: st.MinRTT, CongestionWindow: st.CongestionWindow,
		BytesSent: st.BytesSent, BytesReceived: st.BytesReceived,
		PacketsSent: st.PacketsSent, PacketsLost: st.PacketsLost, PacketsReceived: st.PacketsReceived}
}

// quicStream maps our close semantics onto quic-go's: its Close is the half close.
//
// quic-go forbids SendStream.Close concurrently with Write, and breaking that rule is
// not a data race but a hang: a Write blocked on flow control when Close sets the FIN
// never returns, not even after the connection dies. The edge and core close streams
// from context.AfterFunc to abort them, so a Close that finds a Write in progress
// resets the send side (which does unblock it) instead of sending a FIN.
type quicStream struct {
	*quic.Stream
	mu          sync.Mutex
	writing     int  // Writes in progress
	writeClosed bool // FIN sent or send side reset; no further Writes
	writeErr    error
}

// errAborted is the RESET_STREAM code for a stream closed while a Write was in progress.
const errAborted quic.StreamErrorCode = 1

func (s *quicStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	if s.writeClosed {
		s.mu.Unlock()
		return 0, fmt.Errorf("write on closed stream: %w", net.ErrClosed)
	}
	s.writing++
	s.mu.Unlock()
	n, err := s.Stream.Write(p)
	s.mu.Lock()
	s.writing--
	s.mu.Unlock()
	return n, err
}

// endWrite sends the FIN, or resets the send side if a Write is in progress. Neither
// quic-go call blocks, so holding mu across them is fine.
func (s *quicStream) endWrite(raced error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writeClosed {
		return s.writeErr
	}
	s.writeClosed = true
	if s.writing > 0 {
		s.Stream.CancelWrite(errAborted)
		s.writeErr = raced
	} else {
		s.writeErr = s.Stream.Close()
	}
	return s.writeErr
}

func (s *quicStream) CloseWrite() error {
	return s.endWrite(errors.New("close write: a Write was still in progress, so the stream was reset instead"))
}

func (s *quicStream) Close() error {
	err := s.endWrite(nil) // an abort while writing is what Close is for
	s.CancelRead(0)
	return err
}
