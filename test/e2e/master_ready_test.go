package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/test/harness"
)

// The core's /readyz follows its master sockets: not ready while the master is down
// (a load balancer or systemd watchdog trusts it), ready once both are connected,
// not ready again when the master goes away and ready once it is back, each
// socket's change logged on its own line and in master_connected{socket}.
func TestCoreReadinessFollowsTheMaster(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	pubPort, retPort := harness.FreePort(t, "127.0.0.1"), harness.FreePort(t, "127.0.0.1")
	p := harness.StartPairNoWait(t, harness.PairOpts{MasterPubPort: pubPort, RetPort: retPort})

	readyz := func() int {
		code, _, err := p.Core.Get("/readyz")
		if err != nil {
			t.Fatalf("core admin: %v", err)
		}
		return code
	}
	connected := func(socket string) float64 {
		n, err := p.Core.Metric("salt_broker_core_master_connected", `socket="`+socket+`"`)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The core has been up for a moment with no master: it must say so.
	waitFor(t, ctx, "the core's admin endpoint", func() (bool, string) {
		_, _, err := p.Core.Get("/healthz")
		return err == nil, "no answer"
	})
	for range 5 {
		if code := readyz(); code != http.StatusServiceUnavailable {
			t.Fatalf("/readyz with no master: %d, want 503", code)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if connected("sub") != 0 || connected("dealer") != 0 {
		t.Errorf("master_connected with no master: sub %v dealer %v", connected("sub"), connected("dealer"))
	}

	master := harness.StartMaster(t, harness.MasterOpts{PubPort: pubPort, RetPort: retPort})
	waitFor(t, ctx, "/readyz once the master is up", func() (bool, string) {
		code := readyz()
		return code == http.StatusOK, http.StatusText(code)
	})
	if connected("sub") != 1 || connected("dealer") != 1 {
		t.Errorf("master_connected with the master up: sub %v dealer %v", connected("sub"), connected("dealer"))
	}
	// And it carries requests: the pair works end to end.
	if err := p.Edge.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	mins := harness.StartMinions(t, harness.MinionOpts{Count: 2, IDPrefix: "r", Master: p.EdgeIP, PubPort: p.EdgePub, RetPort: p.EdgeRet})
	if res, err := mins.Request(ctx, harness.RequestOpts{Count: 3, Size: 100, ReplySize: 99}); err != nil || res.OK != res.Total {
		t.Fatalf("requests with the master up: %+v %v", res, err)
	}

	master.Kill()
	waitFor(t, ctx, "/readyz after the master died", func() (bool, string) {
		code := readyz()
		return code == http.StatusServiceUnavailable, http.StatusText(code)
	})
	// Each socket's loss is its own line, and so is each return: an operator sees
	// which of the master's two ports the core lost.
	for _, socket := range []string{"SUB", "DEALER"} {
		waitFor(t, ctx, socket+"'s loss logged", func() (bool, string) {
			return hasLine(p.Core.Stderr(), "lost the connection to the master", "socket="+socket), "not yet"
		})
	}
	if connected("sub") != 0 || connected("dealer") != 0 {
		t.Errorf("master_connected with the master gone: sub %v dealer %v", connected("sub"), connected("dealer"))
	}

	harness.StartMaster(t, harness.MasterOpts{PubPort: pubPort, RetPort: retPort})
	waitFor(t, ctx, "/readyz once the master is back", func() (bool, string) {
		code := readyz()
		return code == http.StatusOK, http.StatusText(code)
	})
	for _, socket := range []string{"SUB", "DEALER"} {
		waitFor(t, ctx, socket+"'s return logged", func() (bool, string) {
			return hasLine(p.Core.Stderr(), "connected to the master again", "socket="+socket), "not yet"
		})
	}
	if connected("sub") != 1 || connected("dealer") != 1 {
		t.Errorf("master_connected with the master back: sub %v dealer %v", connected("sub"), connected("dealer"))
	}
	if res, err := mins.Request(ctx, harness.RequestOpts{Count: 3, Size: 100, ReplySize: 99}); err != nil || res.OK != res.Total {
		t.Fatalf("requests with the master back: %+v %v", res, err)
	}
}

// hasLine: some line of log contains every one of parts.
func hasLine(log string, parts ...string) bool {
	for line := range strings.Lines(log) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}
