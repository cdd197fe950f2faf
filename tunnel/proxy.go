package tunnel

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"

	"golang.org/x/net/http/httpproxy"
)

// proxyConnectTimeout bounds the HTTP CONNECT exchange with a proxy when the
// caller's context allows longer: a proxy that accepts but never answers is dead.
const proxyConnectTimeout = 10 * time.Second

// ProxyFunc returns the HTTP proxy for a target URL (https://host:port), or nil for none.
type ProxyFunc func(target *url.URL) (*url.URL, error)

// ProxyFromEnvironment honours HTTPS_PROXY and NO_PROXY (and their lower-case forms).
func ProxyFromEnvironment(target *url.URL) (*url.URL, error) {
	return httpproxy.FromEnvironment().ProxyFunc()(target)
}

// ProxyURL always uses the proxy at raw (http://[user:pass@]host:port).
func ProxyURL(raw string) (ProxyFunc, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("proxy URL %q: %w", raw, err)
	}
	if u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("proxy URL %q: want http://host:port", raw)
	}
	return func(*url.URL) (*url.URL, error) { return u, nil }, nil
}

// dialMaybeProxy opens TCP to addr, directly or through an HTTP CONNECT proxy.
func dialMaybeProxy(ctx context.Context, addr string, proxy ProxyFunc, control func(string, string, syscall.RawConn) error) (net.Conn, error) {
	d := net.Dialer{Control: control}
	var pu *url.URL
	if proxy != nil {
		var err error
		if pu, err = proxy(&url.URL{Scheme: "https", Host: addr}); err != nil {
			return nil, fmt.Errorf("choose proxy for %s: %w", addr, err)
		}
	}
	if pu == nil {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		return c, nil
	}
	// HTTPS_PROXY may name any scheme; only a plain-text CONNECT proxy is spoken here,
	// and sending CONNECT in clear to a TLS or SOCKS port would fail obscurely.
	if pu.Scheme != "http" {
		return nil, fmt.Errorf("proxy %s: scheme %q is not supported, only http:// CONNECT proxies", pu.Redacted(), pu.Scheme)
	}
	proxyAddr := pu.Host
	if pu.Port() == "" { // HTTPS_PROXY=http://proxy.example is common; 80 is what curl assumes
		proxyAddr = net.JoinHostPort(pu.Hostname(), "80")
	}
	c, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, fmt.Errorf("dial proxy %s: %w", proxyAddr, err)
	}
	if err := connect(ctx, c, addr, pu); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

func connect(ctx context.Context, c net.Conn, addr string, pu *url.URL) error {
	deadline := time.Now().Add(proxyConnectTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetDeadline(deadline)
	// Cancellation too (dialAuto cancels the losing attempt and waits for it).
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer func() {
		stop()
		_ = c.SetDeadline(time.Time{})
	}()
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: addr}, Host: addr, Header: http.Header{}}
	if u := pu.User; u != nil {
		pass, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass)))
	}
	if err := req.Write(c); err != nil {
		return fmt.Errorf("proxy %s: send CONNECT: %w", pu.Host, err)
	}
	// The proxy's answer is read byte-exactly: anything it buffered past the header
	// would belong to TLS, and a CONNECT answer carries no body.
	resp, err := http.ReadResponse(bufio.NewReaderSize(oneByteReader{c}, 1), req)
	if err != nil {
		return fmt.Errorf("proxy %s: read CONNECT answer: %w", pu.Host, err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("proxy %s refused CONNECT to %s: %s (check --proxy credentials and the proxy's allowed ports)", pu.Host, addr, resp.Status)
	}
	return nil
}

// oneByteReader keeps bufio from reading past the proxy's header.
type oneByteReader struct{ c net.Conn }

func (r oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return r.c.Read(p)
}
