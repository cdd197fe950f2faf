package fault

import (
	"testing"
	"time"

	"github.com/salt-broker/salt-broker/test/harness"
	"github.com/salt-broker/salt-broker/test/wan"
)

// Long, lossy paths in the packet-level lab, 50 minions getting jobs at 2/s: the edge and its minions in namespace A,
// the core and the master in namespace B, every packet between them
// delayed and dropped by the lab, over QUIC and over the TCP fallback. Minions time out and retry their returns as Salt
// does (5–10 s, 3 tries). Every publication reaches every minion in order, every
// return reaches the master exactly once, every reply reaches its minion.
func TestWANProfiles(t *testing.T) {
	for _, c := range []struct {
		name string
		p    wan.Profile
	}{
		{"150ms-rtt-1pct-bursty", wan.Profile{Delay: 75 * time.Millisecond, Jitter: 5 * time.Millisecond, BurstP: 0.005, BurstR: 0.4}},
		{"300ms-rtt-5pct", wan.Profile{Delay: 150 * time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.05}},
		// A thin, untidy path: 4 Mbit/s with a 100 ms queue, 1 % of packets delivered
		// twice, 2 % overtaken by later ones, 0.5 % lost.
		{"80ms-rtt-4mbit-dup-reorder", wan.Profile{Delay: 40 * time.Millisecond, Jitter: 2 * time.Millisecond,
			RateBps: 4_000_000, Duplicate: 0.01, Reorder: 0.02, ReorderDelay: 15 * time.Millisecond, Loss: 0.005}},
	} {
		for _, tr := range []string{"quic", "tcp"} {
			t.Run(c.name+"/"+tr, func(t *testing.T) {
				t.Parallel() // each in its own lab
				testWAN(t, c.p, tr)
			})
		}
	}
}

func testWAN(t *testing.T, p wan.Profile, transport string) {
	ctx := ctxFor(t, 3*time.Minute)
	netlab, err := wan.NewLab(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netlab.Close(); err != nil {
			t.Error(err)
		}
	})
	inA, inB := netlab.Wrap(netlab.NSA), netlab.Wrap(netlab.NSB)
	master := harness.StartMaster(t, harness.MasterOpts{Wrap: inB})
	pair := harness.StartPair(t, harness.PairOpts{
		MasterPubPort: master.PubPort, RetPort: master.RetPort,
		CoreIP: wan.AddrB, CoreWrap: inB, CoreNS: netlab.NSB,
		EdgeWrap: inA, EdgeNS: netlab.NSA, EdgeArgs: []string{"--transport", transport},
	})
	mins := harness.StartMinions(t, harness.MinionOpts{
		Master: pair.EdgeIP, PubPort: pair.EdgePub, RetPort: pair.EdgeRet, Count: 50, IDPrefix: "w", Wrap: inA,
		ReturnOnPublish: true, ReturnTimeoutMin: 5 * time.Second, ReturnTimeoutMax: 10 * time.Second, Tries: 3,
	})
	l := &lab{master: master, pair: pair, minions: mins}
	l.warm(t, ctx)
	const pubs = 30
	if _, err := master.Publish(ctx, harness.PublishOpts{Count: pubs, Rate: 2, Size: 463}); err != nil {
		t.Fatal(err)
	}
	st := l.settle(t, ctx, pubs)
	n := int64(st.Minions)
	if st.Pubs != n*pubs || st.Missing != 0 || st.OutOfOrder != 0 || st.Dup != 0 || st.WrongReply != 0 {
		t.Errorf("minions: %+v", st)
	}
	ms, err := master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ms.UniqueRIDs != n*pubs || ms.DupRIDs != 0 {
		t.Errorf("returns at the master: want %d unique, 0 duplicated; got %d unique, %d duplicated", n*pubs, ms.UniqueRIDs, ms.DupRIDs)
	}
	full, _ := mins.Stats(ctx)
	t.Logf("%s: returns ok %d failed %d retried %d; latency p50 %.0f ms p99 %.0f ms; lab forwarded %d dropped %d",
		t.Name(), st.ReqOK, st.ReqFailed, st.ReqRetried, full.LatencyMS.P50, full.LatencyMS.P99, netlab.Forwarded.Load(), netlab.Dropped.Load())
}
