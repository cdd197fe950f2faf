package core

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/internal/wire"
)

// A request waiting for a master the core has never reached is refused once it
// has waited --master-timeout (the time a request sent to the master gets), not
// after its whole class budget, counted as no_master and logged. Once the master
// was reached, a queued request waits out its budget as before (a master restart
// must not cost returns).
func TestCoreRefusesRequestsForAMasterNeverReached(t *testing.T) {
	const masterTimeout = 2 * time.Minute
	l := newReqLab(t, Config{MaxInFlight: 1, MasterTimeout: masterTimeout, Table: TableLimits{TTL: time.Hour}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	wait := func(ch <-chan answer) answer {
		t.Helper()
		select {
		case a := <-ch:
			return a
		case <-ctx.Done():
			t.Fatal("no answer from the core")
			return answer{}
		}
	}
	if n := l.metric("salt_broker_core_requests_total", "result", "no_master"); n != 0 {
		t.Fatalf("no_master before any request: %v", n)
	}

	// No master ever: both wait, the older is refused once past the timeout.
	old := l.request(1, 10*time.Minute, "old")
	waitFor(t, 10*time.Second, "the first request queued", func() bool { return l.metric("salt_broker_core_requests_queued", "", "") == 1 })
	l.advance(time.Minute)
	young := l.request(2, 10*time.Minute, "young")
	waitFor(t, 10*time.Second, "the second request queued", func() bool { return l.metric("salt_broker_core_requests_queued", "", "") == 2 })
	l.advance(masterTimeout - time.Minute + time.Second) // the first has waited just over the timeout, the second a minute less
	a := wait(old)
	if a.err != nil || a.typ != wire.TRefused || a.ref.ID != 1 || a.ref.Code != wire.RefusedTimeout || !strings.Contains(a.ref.Reason, "not reached the master") {
		t.Fatalf("request 1: %s %+v %v, want refused: master never reached", a.typ, a.ref, a.err)
	}
	waitFor(t, 10*time.Second, "the refusal counted", func() bool {
		return l.metric("salt_broker_core_requests_total", "result", "no_master") == 1
	})
	waitFor(t, 10*time.Second, "the refusal logged", func() bool {
		return strings.Contains(l.logs.String(), "for a master this core has never reached")
	})
	if n := l.metric("salt_broker_core_requests_queued", "", ""); n != 1 {
		t.Fatalf("queued after the refusal: %v, want the younger request", n)
	}

	// The master comes up: the younger request goes to it and takes the one slot.
	m := startFakeMaster(t, l.retPort)
	var first []byte
	select {
	case msg := <-m.reqs:
		first = msg.Frames[3]
	case <-ctx.Done():
		t.Fatal("the queued request never reached the master")
	}
	if string(first) != "young" {
		t.Fatalf("the master got %q, want the younger request", first)
	}
	// Behind it a request queues, and waits far past the timeout: the master was
	// reached, so it is not refused for the master's absence. (The one at the master
	// times out after masterTimeout, which frees the slot for it.)
	third := l.request(3, 10*time.Minute, "third")
	waitFor(t, 10*time.Second, "the third request queued", func() bool { return l.metric("salt_broker_core_requests_queued", "", "") == 1 })
	l.advance(masterTimeout + time.Second)
	if a := wait(young); a.typ != wire.TRefused || a.ref.Code != wire.RefusedTimeout || strings.Contains(a.ref.Reason, "not reached") {
		t.Fatalf("request 2: %s %+v %v, want the master's own timeout", a.typ, a.ref, a.err)
	}
	select {
	case msg := <-m.reqs:
		if string(msg.Frames[3]) != "third" {
			t.Fatalf("the master got %q, want the third request", msg.Frames[3])
		}
	case a := <-third:
		t.Fatalf("request 3 answered %s %+v %v instead of reaching the master", a.typ, a.ref, a.err)
	case <-ctx.Done():
		t.Fatal("the third request never reached the master")
	}
	if n := l.metric("salt_broker_core_requests_total", "result", "no_master"); n != 1 {
		t.Fatalf("no_master %v after the master was reached, want 1", n)
	}
}
