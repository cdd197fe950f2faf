package core

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/tunnel"
)

// Two edge sessions presenting one certificate name are both served (the name is
// all the core knows of an edge), but the core says so, naming the name and both
// addresses, at most once a minute per name. Connections of one session's pool
// are no such thing.
func TestCoreWarnsOfTwoEdgesWithOneCertificate(t *testing.T) {
	pki, err := certs.NewEphemeral(nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	c, err := New(Config{Name: "test-core", MasterHost: "127.0.0.1", Listen: "127.0.0.1:0",
		MasterPubPort: freeTCPPort(t), MasterRetPort: freeTCPPort(t),
		Tunnel: tunnel.Config{TLS: pki.Server}, Registry: prometheus.NewRegistry(), DrainTimeout: -1,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		_ = c.Run(ctx)
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-ran:
		case <-time.After(30 * time.Second):
			t.Error("the core did not stop within 30 s")
		}
	})
	edge := tunnel.Config{TLS: pki.Client}
	const warning = "two edge sessions with one certificate name are connected"

	a := dialSlot(t, c, edge, 1, 0)
	a2 := dialSlot(t, c, edge, 1, 1)   // the same session's pool
	time.Sleep(200 * time.Millisecond) // nothing to wait for: the warning must not come
	if strings.Contains(logs.String(), warning) {
		t.Fatalf("a session's pool taken for two edges:\n%s", logs.String())
	}

	b := dialSlot(t, c, edge, 2, 0) // another edge with the same certificate
	waitFor(t, 10*time.Second, "the warning", func() bool { return strings.Contains(logs.String(), warning) })
	line := logs.String()[strings.Index(logs.String(), warning):]
	line, _, _ = strings.Cut(line, "\n")
	for _, want := range []string{"cert_name=edge", "remote=127.0.0.1:" + port(b.sess.LocalAddr()),
		"edge_session=0000000000000002", "other_edge_session=0000000000000001"} {
		if !strings.Contains(line, want) {
			t.Errorf("the warning lacks %q: %s", want, line)
		}
	}
	// The other session has two connections; either one's address names it.
	if !strings.Contains(line, "other_remote=127.0.0.1:"+port(a.sess.LocalAddr())+" ") &&
		!strings.Contains(line, "other_remote=127.0.0.1:"+port(a2.sess.LocalAddr())+" ") {
		t.Errorf("the warning's other_remote is neither connection of session 1 (%s, %s): %s",
			a.sess.LocalAddr(), a2.sess.LocalAddr(), line)
	}

	dialSlot(t, c, edge, 3, 0) // a third, within the minute: no second line
	waitFor(t, 10*time.Second, "the third session connected", func() bool {
		return strings.Count(logs.String(), `msg="edge connected"`) == 4
	})
	if n := strings.Count(logs.String(), warning); n != 1 {
		t.Fatalf("the warning %d times within a minute, want once:\n%s", n, logs.String())
	}
}

func port(a net.Addr) string {
	_, p, _ := net.SplitHostPort(a.String())
	return p
}
