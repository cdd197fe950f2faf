package tunnel

import "strings"

import "log/slog"

import "testing"

// TCP_CONGESTION is a Linux socket option: this test builds there only.

// --tcp-congestion: a name the kernel has is set on the socket; one it refuses
// costs nothing but one log line, however many connections are dialed.
func TestDialerTCPCongestion(t *testing.T) {
	e := newEnv(t)
	wg := e.serveEcho(t)
	for _, c := range []struct{ name, want string }{{"reno", "reno"}, {"no-such-algorithm", ""}} {
		logs := &logBuf{}
		d, err := NewDialer(Config{TLS: e.pki.Client, Logger: slog.New(slog.NewTextHandler(logs, nil))},
			DialOptions{Mode: ModeTCP, TCPCongestion: c.name})
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			s, err := d.Dial(e.ctx, e.ln.Addr().String())
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if err := roundTrip(e.ctx, s, []byte("x")); err != nil {
				t.Fatal(err)
			}
			got, err := congestionOf(s.(*tcpSession).raw.Conn)
			if err != nil {
				t.Fatal(err)
			}
			if c.want != "" && got != c.want {
				t.Errorf("--tcp-congestion %s: the socket runs %q", c.name, got)
			}
			_ = s.CloseWithError("done")
		}
		warned := strings.Count(logs.String(), "--tcp-congestion not applied")
		if c.want == "" && (warned != 1 || !strings.Contains(logs.String(), "hint=")) {
			t.Errorf("--tcp-congestion %s refused: %d warnings, want one with a hint:\n%s", c.name, warned, logs)
		}
		if c.want != "" && warned != 0 {
			t.Errorf("--tcp-congestion %s applied but warned:\n%s", c.name, logs)
		}
		_ = d.Close()
	}
	_ = e.ln.Close()
	wg.Wait()
}
