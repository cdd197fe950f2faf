// Package wan is `make bench-wan`: the WAN lab's scenarios run for each way minions
// can reach a master — direct, through the old salt-broker forwarder, through the
// pair over QUIC and over TCP — side by side in one run, with the same real libzmq
// peers behaving as Salt does (50 minions, jobs at 2/s, every job answered by a
// return that is retried after 5–10 s, 3 tries). It prints what each mode delivered,
// duplicated and lost, and how fast; figures, never a pass/fail on timing.
//
// Placement, in the packet lab's two namespaces (test/wan.Lab): the master in B; the
// minions, the forwarder and the edge in A; the core in B beside the master. Every
// packet between A and B — ZeroMQ's TCP, QUIC, the TLS fallback — crosses the same
// impaired link.
package wan

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/salt-broker/salt-broker/test/harness"
	"github.com/salt-broker/salt-broker/test/wan"
)

// The broker is measured as operators run it: built without the race detector.
func TestMain(m *testing.M) {
	harness.RaceBuild = false
	harness.Main(m)
}

var minions = flag.Int("minions", 50, "minions per run")

const (
	jobRate    = 2 // jobs per second
	jobTimeMin = 1 * time.Second
	jobTimeMax = 4 * time.Second
)

type blackout struct{ at, length time.Duration } // at: after publishing starts

type scenario struct {
	name      string
	profile   wan.Profile
	jobs      int
	blackouts []blackout
}

var scenarios = []scenario{
	{name: "150ms RTT, 1% bursty loss", jobs: 60,
		profile: wan.Profile{Delay: 75 * time.Millisecond, Jitter: 5 * time.Millisecond, BurstP: 0.005, BurstR: 0.4}},
	{name: "300ms RTT, 5% loss", jobs: 60,
		profile: wan.Profile{Delay: 150 * time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.05}},
	{name: "15s blackout, returns in flight", jobs: 80,
		profile:   wan.Profile{Delay: 25 * time.Millisecond, Jitter: 5 * time.Millisecond},
		blackouts: []blackout{{10 * time.Second, 15 * time.Second}}},
	{name: "3 blackouts, 5s 10s 20s", jobs: 140,
		profile:   wan.Profile{Delay: 25 * time.Millisecond, Jitter: 5 * time.Millisecond},
		blackouts: []blackout{{5 * time.Second, 5 * time.Second}, {18 * time.Second, 10 * time.Second}, {36 * time.Second, 20 * time.Second}}},
}

var modes = []string{"direct", "old forwarder", "pair quic", "pair tcp"}

type result struct {
	expected, delivered    int64 // publications: minions × jobs, and distinct ones received
	missing, outOfOrder    int64
	returns                int64 // returns the minions sent (one per publication received)
	unique, dup, lost      int64 // at the master; lost = sent by a minion, never at the master
	failed                 int64 // returns the minion gave up on after its last try
	p50, p99               float64
	recoveryFirst          float64 // ms, link back → first publication at any minion; worst over blackouts
	recoveryAll            float64 // ms, link back → every minion had one; worst over blackouts
	labDropped, labForward uint64
}

func BenchmarkWAN(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("the packet lab needs root (network namespaces and TUN devices): run make bench-wan as root")
	}
	all := make([][]result, len(scenarios))
	for i, sc := range scenarios {
		all[i] = make([]result, len(modes))
		for j, mode := range modes {
			b.Run(strings.ReplaceAll(sc.name, " ", "_")+"/"+strings.ReplaceAll(mode, " ", "_"), func(b *testing.B) {
				all[i][j] = run(b, sc, mode)
			})
		}
	}
	report(all)
}

func run(b *testing.B, sc scenario, mode string) result {
	var r result
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	lab, err := wan.NewLab(wan.Profile{}) // set up unimpaired; the profile starts with the jobs
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := lab.Close(); err != nil {
			b.Error(err)
		}
	})
	inA, inB := lab.Wrap(lab.NSA), lab.Wrap(lab.NSB)
	master := harness.StartMaster(b, harness.MasterOpts{IP: "0.0.0.0", Wrap: inB})
	ip, pub, ret := wan.AddrB, master.PubPort, master.RetPort
	var pair *harness.Pair
	switch mode {
	case "old forwarder":
		ip, pub, ret = "127.0.0.1", harness.FreePort(b, "127.0.0.1"), harness.FreePort(b, "127.0.0.1")
		harness.StartForwarder(b, harness.ForwarderOpts{Master: wan.AddrB, PubPort: master.PubPort, RetPort: master.RetPort,
			Bind: ip, BindPubPort: pub, BindRetPort: ret, Wrap: inA})
	case "pair quic", "pair tcp":
		pair = harness.StartPair(b, harness.PairOpts{
			MasterPubPort: master.PubPort, RetPort: master.RetPort,
			CoreIP: wan.AddrB, CoreWrap: inB, CoreNS: lab.NSB,
			EdgeWrap: inA, EdgeNS: lab.NSA, EdgeArgs: []string{"--transport", strings.TrimPrefix(mode, "pair ")},
		})
		ip, pub, ret = pair.EdgeIP, pair.EdgePub, pair.EdgeRet
	}
	mins := harness.StartMinions(b, harness.MinionOpts{
		Master: ip, PubPort: pub, RetPort: ret, Count: *minions, IDPrefix: "w", Wrap: inA,
		ReturnOnPublish: true, ReturnTimeoutMin: 5 * time.Second, ReturnTimeoutMax: 10 * time.Second, Tries: 3,
		JobTimeMin: jobTimeMin, JobTimeMax: jobTimeMax, // returns are in flight whenever a link fails
		LateClose:          20 * time.Second, // a timed-out socket lingers, as Salt 3007's did (docs/interop.md)
		ReconnectRandomize: true,             // Salt's defaults: recon_default 1 s, recon_max 10 s, randomized
	})
	if err := harness.WarmUp(ctx, master, mins); err != nil {
		b.Fatal(err)
	}
	if err := mins.ResetStats(ctx); err != nil {
		b.Fatal(err)
	}
	if err := master.ResetStats(ctx); err != nil {
		b.Fatal(err)
	}

	lab.SetProfile(sc.profile)
	start := time.Now()
	tag, err := master.PublishAsync(harness.PublishOpts{Count: sc.jobs, Rate: jobRate, Size: 463})
	if err != nil {
		b.Fatal(err)
	}
	var backAt []time.Time
	for _, bo := range sc.blackouts {
		time.Sleep(time.Until(start.Add(bo.at)))
		lab.SetDown(true)
		time.Sleep(bo.length)
		lab.SetDown(false)
		backAt = append(backAt, time.Now())
	}
	if _, err := master.WaitPublished(ctx, tag); err != nil {
		b.Fatal(err)
	}
	// Until every return has ended and every publication arrived — or, for a mode
	// that lost some, nothing changed for 10 s. Bounded: 3 minutes.
	sctx, scancel := context.WithTimeout(ctx, 3*time.Minute)
	st, err := mins.Settle(sctx, int64(sc.jobs), 10*time.Second)
	scancel()
	if err != nil {
		b.Logf("%v; measuring what arrived: %+v", err, st)
	}
	ms, err := master.Stats(ctx)
	if err != nil {
		b.Fatal(err)
	}
	r.expected = int64(*minions * sc.jobs)
	r.delivered = st.Pubs - st.Dup
	r.missing, r.outOfOrder = st.Missing, st.OutOfOrder
	r.returns, r.failed = st.Returns, st.ReqFailed
	r.unique, r.dup = ms.UniqueRIDs, ms.DupRIDs
	r.lost = max(0, r.returns-r.unique)
	r.p50, r.p99 = st.ReturnLatencyMS.P50, st.ReturnLatencyMS.P99
	r.recoveryFirst, r.recoveryAll = -1, -1
	for _, t := range backAt {
		rs, err := mins.StatsSince(ctx, t)
		if err != nil || rs.Recovery == nil {
			b.Fatalf("recovery stats: %v", err)
		}
		r.recoveryFirst = max(r.recoveryFirst, rs.Recovery.FirstMS)
		r.recoveryAll = max(r.recoveryAll, rs.Recovery.AllMS)
	}
	r.labForward, r.labDropped = lab.Forwarded.Load(), lab.Dropped.Load()
	b.Logf("%s / %s: %+v", sc.name, mode, r)
	if pair != nil && (r.dup > 0 || r.lost > 0 || r.delivered < r.expected) {
		b.Logf("the pair broke a promise: duplicated rids %v", ms.DupExamples)
		if dir := os.Getenv("BENCH_WAN_LOGS"); dir != "" {
			name := strings.NewReplacer(" ", "_", ",", "", "%", "").Replace(sc.name + "-" + mode)
			_ = os.WriteFile(filepath.Join(dir, name+"-edge.log"), []byte(pair.Edge.Stderr()), 0o644)
			_ = os.WriteFile(filepath.Join(dir, name+"-core.log"), []byte(pair.Core.Stderr()), 0o644)
			b.Logf("broker logs in %s", dir)
		}
	}
	return r
}

func report(all [][]result) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "\n%d minions, jobs at %d/s, each answered by a return %s–%s later (retried after 5–10 s, 3 tries); return latency: from the job's end to the reply, waiting behind earlier returns and retries included\n",
		*minions, jobRate, jobTimeMin, jobTimeMax)
	for i, sc := range scenarios {
		ran := false
		for _, r := range all[i] {
			ran = ran || r.expected > 0
		}
		if !ran { // filtered out by -bench
			continue
		}
		fmt.Fprintf(w, "\n%s (%d jobs)\n", sc.name, sc.jobs)
		fmt.Fprintln(w, "mode\tpubs delivered %\tmissing\treturns sent\tat master unique\tduplicated\tlost\tfailed at minion\treturn p50 ms\treturn p99 ms\trecovery first s\trecovery all s\t")
		for j, mode := range modes {
			r := all[i][j]
			if r.expected == 0 {
				continue
			}
			fmt.Fprintf(w, "%s\t%.1f\t%d\t%d\t%d\t%d\t%d\t%d\t%.0f\t%.0f\t%s\t%s\t\n", mode,
				100*float64(r.delivered)/float64(r.expected), r.missing, r.returns, r.unique, r.dup, r.lost, r.failed,
				r.p50, r.p99, secs(r.recoveryFirst), secs(r.recoveryAll))
		}
		q, t := all[i][2], all[i][3]
		if q.p50 > 0 && t.p50 > 0 {
			fmt.Fprintf(w, "pair tcp ÷ quic\t\t\t\t\t\t\t\t%.2f×\t%.2f×\t\t\t\n", t.p50/q.p50, t.p99/q.p99)
		}
		d, f := all[i][0], all[i][1]
		if d.p99 > 0 && f.p99 > 0 && q.p99 > 0 {
			fmt.Fprintf(w, "pair quic ÷ direct, ÷ forwarder\t\t\t\t\t\t\t\t%.2f×, %.2f×\t%.2f×, %.2f×\t\t\t\n",
				q.p50/d.p50, q.p50/f.p50, q.p99/d.p99, q.p99/f.p99)
		}
	}
	_ = w.Flush()
}

func secs(ms float64) string {
	if ms < 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", ms/1000)
}
