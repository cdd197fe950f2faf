package wan

import (
	"io"
	"net"
	"sync"
	"time"
)

// Link impairs both transports between an edge and its core on one port number:
// datagrams through a UDPProxy, and TCP through a forwarder on the same port whose
// blackouts stall the bytes, as a dead path does to a TCP connection.
type Link struct {
	*UDPProxy
	tcp    net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

// NewLink listens on 127.0.0.1 (UDP and TCP, same port) and forwards to target.
func NewLink(target string, p Profile) (*Link, error) {
	var px *UDPProxy
	var tcp net.Listener
	var err error
	for range 20 { // the free UDP port may be taken on TCP (parallel tests): try another
		if px, err = NewUDPProxy("127.0.0.1:0", target, p); err != nil {
			return nil, err
		}
		if tcp, err = net.Listen("tcp", px.Addr()); err == nil {
			break
		}
		_ = px.Close()
	}
	if err != nil {
		return nil, err
	}
	l := &Link{UDPProxy: px, tcp: tcp, target: target, conns: map[net.Conn]struct{}{}}
	l.wg.Go(l.accept)
	return l, nil
}

func (l *Link) accept() {
	for {
		c, err := l.tcp.Accept()
		if err != nil {
			return
		}
		l.wg.Go(func() { l.forward(c) })
	}
}

func (l *Link) track(c net.Conn, on bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if on {
		l.conns[c] = struct{}{}
	} else {
		delete(l.conns, c)
	}
}

func (l *Link) forward(c net.Conn) {
	u, err := net.Dial("tcp", l.target)
	if err != nil {
		_ = c.Close()
		return
	}
	l.track(c, true)
	l.track(u, true)
	defer func() {
		_ = c.Close()
		_ = u.Close()
		l.track(c, false)
		l.track(u, false)
	}()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			for l.imp.down.Load() { // a blackout: the bytes wait, as on a dead path
				select {
				case <-l.closed:
					done <- struct{}{}
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				if err != io.EOF {
					break
				}
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				break
			}
		}
		done <- struct{}{}
	}
	go pipe(u, c)
	go pipe(c, u)
	<-done
	<-done
}

// Close stops both proxies and every forwarded connection.
func (l *Link) Close() error {
	err := l.UDPProxy.Close()
	_ = l.tcp.Close()
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
	return err
}
