package tunnel

import (
	"context"
	"net"
	"sync"

	"github.com/quic-go/quic-go"
)

func (c Config) quicConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           c.HandshakeTimeout,
		MaxIdleTimeout:                 c.IdleTimeout,
		KeepAlivePeriod:                c.KeepAlivePeriod,
		InitialStreamReceiveWindow:     1 << 20,
		MaxStreamReceiveWindow:         c.StreamWindow,
		InitialConnectionReceiveWindow: 4 << 20,
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
	return Stats{RTT: st.SmoothedRTT, BytesSent: st.BytesSent, BytesReceived: st.BytesReceived, PacketsLost: st.PacketsLost}
}

// quicStream maps our close semantics onto quic-go's: its Close is the half close.
type quicStream struct {
	*quic.Stream
	closeWrite sync.Once
	writeErr   error
}

func (s *quicStream) CloseWrite() error {
	s.closeWrite.Do(func() { s.writeErr = s.Stream.Close() })
	return s.writeErr
}

func (s *quicStream) Close() error {
	err := s.CloseWrite()
	s.CancelRead(0)
	return err
}
