// Package wan is `make bench-wan`: the WAN lab's scenarios run for each way minions
// can reach a master — direct, through the old salt-broker forwarder, through the
// pair over QUIC and over TCP — side by side in one run, with the same real libzmq
// peers behaving as Salt does. Three kinds of workload:
//
//   - jobs: minions (50 unless a scenario says) get jobs at 2/s; every job is answered
//     by a return that is retried after 5–10 s, 3 tries (Salt's return_retry_timer).
//   - files: every minion fetches 1 MiB file chunks at once with Salt's file-client
//     timing (60 s per try, 3 tries), over a slow, long link.
//   - shared: the same chunks, back to back, through a rate-capped bottleneck that a
//     bulk TCP flow shares; the lab counts what each got.
//
// It prints what each mode delivered, duplicated and lost, and how fast, with ratios
// against the direct link measured in the same run, and draws each scenario's
// latency CDF (a PNG per scenario, with -plots DIR); figures, never a pass/fail.
//
// Placement, in the packet lab's two namespaces (test/wan.Lab): the master in B; the
// minions, the forwarder and the edge in A; the core in B beside the master. Every
// packet between A and B — ZeroMQ's TCP, QUIC, the TLS fallback, the bulk flow —
// crosses the same impaired link.
package wan

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

var (
	minionsFlag = flag.Int("minions", 0, "minions per run (0: each scenario's own, 50 unless it says)")
	jobsFlag    = flag.Int("jobs", 0, "jobs per run of the job scenarios (0: each scenario's own)")
	plotDir     = flag.String("plots", os.Getenv("BENCH_WAN_PLOTS"), "directory for each scenario's latency CDF, wan-<scenario>.png (empty: none)")
)

type kind int

const (
	jobs   kind = iota // publications, each answered by a return
	files              // every minion fetches file chunks at once, Salt's file-client timing
	shared             // file chunks back to back beside a bulk TCP flow on one bottleneck
)

const (
	defaultMinions = 50
	defaultJobRate = 2 // jobs per second
	jobTimeMin     = 1 * time.Second
	jobTimeMax     = 4 * time.Second

	// Salt's file client: cp.get_file asks for one chunk of file_buffer_size (1 MiB)
	// per request, through a channel that waits 60 s per try, 3 tries.
	chunkSize      = 1 << 20
	chunkReqSize   = 300
	fileTryTimeout = 60 * time.Second
	fileTries      = 3

	bulkPort   = 9100            // the competing flow's port, in the lab's namespaces
	bulkLead   = 3 * time.Second // the bulk flow runs alone this long first
	sharedWarm = 5 * time.Second // then the chunks run this long before the window opens
)

type blackout struct{ at, length time.Duration } // at: after publishing starts

type scenario struct {
	name    string // sub-benchmark name (spaces become _; no slashes; not matching another's -bench prefix)
	slug    string // the plot's file name: wan-<slug>.png
	kind    kind
	profile wan.Profile
	minions int // 0: defaultMinions
	perProc int // minions per minions.py process; 0: all in one

	// jobs
	jobs      int
	jobRate   float64 // 0: defaultJobRate
	atOnce    bool    // a job is answered as soon as it arrives (else after 1–4 s)
	blackouts []blackout

	// files, shared
	chunks int           // per minion, one after another
	window time.Duration // shared: how long the shares are measured
}

var scenarios = []scenario{
	{name: "150ms RTT, 1% bursty loss", slug: "150ms-bursty", jobs: 60,
		profile: wan.Profile{Delay: 75 * time.Millisecond, Jitter: 5 * time.Millisecond, BurstP: 0.005, BurstR: 0.4}},
	{name: "300ms RTT, 5% loss", slug: "300ms-5pct", jobs: 60,
		profile: wan.Profile{Delay: 150 * time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.05}},
	{name: "600ms RTT, 10% loss", slug: "600ms-10pct", jobs: 60,
		profile: wan.Profile{Delay: 300 * time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.10}},
	{name: "15s blackout, returns in flight", slug: "blackout-15s", jobs: 80,
		profile:   wan.Profile{Delay: 25 * time.Millisecond, Jitter: 5 * time.Millisecond},
		blackouts: []blackout{{10 * time.Second, 15 * time.Second}}},
	{name: "3 blackouts, 5s 10s 20s", slug: "blackouts-3", jobs: 140,
		profile:   wan.Profile{Delay: 25 * time.Millisecond, Jitter: 5 * time.Millisecond},
		blackouts: []blackout{{5 * time.Second, 5 * time.Second}, {18 * time.Second, 10 * time.Second}, {36 * time.Second, 20 * time.Second}}},
	// A geostationary satellite: 600 ms RTT without jitter, 4 Mbit/s with the lab's
	// bottleneck queue (100 ms at the rate: 50 KB), light loss; every minion fetches
	// one 1 MiB chunk at once, 20 MiB in all (42 s of the link at best).
	{name: "satellite, RTT 600 ms, 4Mbps, 0.5% loss, 1MiB chunks", slug: "satellite", kind: files, minions: 20, chunks: 1,
		profile: wan.Profile{Delay: 300 * time.Millisecond, Loss: 0.005, RateBps: 4_000_000}},
	// A branch office's uplink shared with a bulk TCP flow (a backup, a download) in
	// the same direction as the chunks (master to minions): how the bottleneck splits.
	{name: "shared bottleneck, 8Mbps, 50ms RTT, bulk TCP flow beside 1MiB chunks", slug: "shared", kind: shared, minions: 10,
		chunks: 1000, window: 30 * time.Second,
		profile: wan.Profile{Delay: 25 * time.Millisecond, RateBps: 8_000_000}},
	// Thousands of minions answering every job the moment it arrives, on an
	// unimpaired link: a saturated but healthy tunnel. Four minion processes.
	{name: "thousands of minions, each job answered at once, unimpaired", slug: "thousands", minions: 2000, perProc: 500,
		jobs: 10, jobRate: 0.5, atOnce: true},
}

// profileSettle: how long each mode runs on the profile before the workload.
const profileSettle = 12 * time.Second

var modes = []string{"direct", "old forwarder", "pair quic", "pair tcp"}

type result struct {
	ran     bool
	minions int

	// jobs
	expected, delivered        int64 // publications: minions × jobs, and distinct ones received
	missing, outOfOrder        int64
	returns                    int64 // returns the minions sent (one per publication received)
	unique, dup, lost          int64 // at the master; lost = sent by a minion, never at the master
	failed                     int64 // requests the minion gave up on after its last try
	recoveryFirst, recoveryAll float64

	// files, shared
	chunksOK, retried, wrong int64
	masterReplies            int64
	masterMiB                float64
	doneS                    float64 // files: from the requests' start to the last one's end
	bulkMbps                 float64 // shared: the bulk flow's goodput in the window
	saltShare, bulkShare     float64 // shared: of the cap, from the IP bytes the lab delivered
	bulkErr                  error

	p50, p99           float64 // ms
	reconnects, stalls float64 // the edge's, over the measured part; -1: not a pair
	labForward         uint64
	labDropped         uint64
	queueDropped       uint64
	samples            []float64 // latency samples, ms, sorted: the CDF
	denom              int       // what the CDF's shares are of (0: of the samples)
}

func BenchmarkWAN(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("the packet lab needs root (network namespaces and TUN devices): run make bench-wan as root")
	}
	at := commit()
	all := make([][]result, len(scenarios))
	for i, sc := range scenarios {
		all[i] = make([]result, len(modes))
		for j, mode := range modes {
			b.Run(strings.ReplaceAll(sc.name, " ", "_")+"/"+strings.ReplaceAll(mode, " ", "_"), func(b *testing.B) {
				all[i][j] = run(b, sc, mode)
			})
		}
		if *plotDir != "" && slices.ContainsFunc(all[i], func(r result) bool { return r.ran }) {
			path := filepath.Join(*plotDir, "wan-"+sc.slug+".png")
			if err := plotCDF(path, sc.name+" (at "+at+")", ylabel(sc.kind), all[i]); err != nil {
				b.Errorf("plot %s: %v", path, err)
			} else {
				b.Logf("latency CDF: %s", path)
			}
		}
	}
	report(all, at)
}

func ylabel(k kind) string {
	switch k {
	case files:
		return "share of chunks delivered"
	case shared:
		return "share of chunks fetched"
	}
	return "share of returns answered"
}

// commit names the tree the broker was built from, as the tables and plots say.
func commit() string {
	out, err := exec.Command("git", "-C", harness.ModuleRoot(), "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown commit"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", harness.ModuleRoot(), "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		c += " + local changes"
	}
	return c
}

func (sc scenario) count() int {
	switch {
	case *minionsFlag > 0:
		return *minionsFlag
	case sc.minions > 0:
		return sc.minions
	}
	return defaultMinions
}

func (sc scenario) jobCount() int {
	if *jobsFlag > 0 {
		return *jobsFlag
	}
	return sc.jobs
}

// lab is one mode's run of a scenario: the link, the master, what stands between,
// and the minions in one or more processes.
type lab struct {
	*wan.Lab
	master *harness.Master
	pair   *harness.Pair
	groups []*harness.Minions
}

func run(b *testing.B, sc scenario, mode string) result {
	r := result{ran: true, minions: sc.count(), reconnects: -1, stalls: -1}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	l := setUp(b, ctx, sc, mode)
	var reconnects0, stalls0 float64
	if l.pair != nil {
		reconnects0, stalls0 = edgeMetrics(l.pair)
	}

	l.SetProfile(sc.profile)
	// The set-up ran on a clean link; a real one has had its delay and loss since
	// before the connections came up. Let every mode see the profile for a while
	// before the workload (the pair's RTT floor spans 10 s), so none is measured
	// adapting to a link that changed the moment the jobs began.
	time.Sleep(profileSettle)
	switch sc.kind {
	case jobs:
		runJobs(b, ctx, sc, l, &r)
	case files:
		runFiles(b, ctx, sc, l, &r)
	case shared:
		runShared(b, ctx, sc, l, &r)
	}
	ms, err := l.master.Stats(ctx)
	if err != nil {
		b.Fatal(err)
	}
	r.unique, r.dup = ms.UniqueRIDs, ms.DupRIDs
	r.masterReplies, r.masterMiB = ms.Replies, float64(ms.ReplyBytes)/(1<<20)
	if l.pair != nil {
		rc, st := edgeMetrics(l.pair)
		r.reconnects, r.stalls = rc-reconnects0, st-stalls0
	}
	r.labForward, r.labDropped, r.queueDropped = l.Forwarded.Load(), l.Dropped.Load(), l.QueueDropped.Load()
	if len(r.samples) > 0 {
		r.p50, r.p99 = percentile(r.samples, 50), percentile(r.samples, 99)
	}
	b.Logf("%s / %s: %s", sc.name, mode, r)
	broken := r.dup > 0 || r.lost > 0 || (sc.kind == jobs && r.delivered < r.expected) || (sc.kind == files && r.chunksOK < int64(r.minions*sc.chunks))
	if l.pair != nil && broken {
		b.Logf("the pair broke a promise: duplicated rids %v", ms.DupExamples)
	}
	// BENCH_WAN_LOGS keeps every pair's logs (at debug: the sizer's decisions, the
	// stalls), not only a broken one's: why a profile is slow is in them.
	if dir := os.Getenv("BENCH_WAN_LOGS"); dir != "" && l.pair != nil {
		name := strings.NewReplacer(" ", "_", ",", "", "%", "").Replace(sc.slug + "-" + mode)
		_ = os.WriteFile(filepath.Join(dir, name+"-edge.log"), []byte(l.pair.Edge.Stderr()), 0o644)
		_ = os.WriteFile(filepath.Join(dir, name+"-core.log"), []byte(l.pair.Core.Stderr()), 0o644)
		b.Logf("broker logs in %s", dir)
	}
	return r
}

// setUp builds the mode's path across an unimpaired lab and waits until every
// minion is subscribed, its counters zeroed: the profile starts with the workload.
func setUp(b *testing.B, ctx context.Context, sc scenario, mode string) *lab {
	wl, err := wan.NewLab(wan.Profile{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := wl.Close(); err != nil {
			b.Error(err)
		}
	})
	l := &lab{Lab: wl}
	inA, inB := wl.Wrap(wl.NSA), wl.Wrap(wl.NSB)
	l.master = harness.StartMaster(b, harness.MasterOpts{IP: "0.0.0.0", Wrap: inB})
	ip, pub, ret := wan.AddrB, l.master.PubPort, l.master.RetPort
	switch mode {
	case "old forwarder":
		ip, pub, ret = "127.0.0.1", harness.FreePort(b, "127.0.0.1"), harness.FreePort(b, "127.0.0.1")
		harness.StartForwarder(b, harness.ForwarderOpts{Master: wan.AddrB, PubPort: l.master.PubPort, RetPort: l.master.RetPort,
			Bind: ip, BindPubPort: pub, BindRetPort: ret, Wrap: inA})
	case "pair quic", "pair tcp":
		l.pair = harness.StartPair(b, harness.PairOpts{
			MasterPubPort: l.master.PubPort, RetPort: l.master.RetPort,
			CoreIP: wan.AddrB, CoreWrap: inB, CoreNS: wl.NSB,
			EdgeWrap: inA, EdgeNS: wl.NSA, EdgeArgs: []string{"--transport", strings.TrimPrefix(mode, "pair ")},
		})
		ip, pub, ret = l.pair.EdgeIP, l.pair.EdgePub, l.pair.EdgeRet
	}
	n := sc.count()
	per := n
	if sc.perProc > 0 {
		per = sc.perProc
	}
	for g := 0; g*per < n; g++ {
		o := harness.MinionOpts{
			Master: ip, PubPort: pub, RetPort: ret, Count: min(per, n-g*per), IDPrefix: "w", Wrap: inA,
			ReturnOnPublish: sc.kind == jobs, ReturnTimeoutMin: 5 * time.Second, ReturnTimeoutMax: 10 * time.Second, Tries: 3,
			LateClose:          20 * time.Second, // a timed-out socket lingers, as Salt 3007's did (docs/interop.md)
			ReconnectRandomize: true,             // Salt's defaults: recon_default 1 s, recon_max 10 s, randomized
		}
		if per < n {
			o.IDPrefix = fmt.Sprintf("w%c", 'a'+g)
		}
		if sc.kind == jobs && !sc.atOnce {
			o.JobTimeMin, o.JobTimeMax = jobTimeMin, jobTimeMax // returns are in flight whenever a link fails
		}
		l.groups = append(l.groups, harness.StartMinions(b, o))
	}
	if err := harness.WarmUp(ctx, l.master, l.groups...); err != nil {
		b.Fatal(err)
	}
	for _, g := range l.groups {
		if err := g.ResetStats(ctx); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.master.ResetStats(ctx); err != nil {
		b.Fatal(err)
	}
	return l
}

func runJobs(b *testing.B, ctx context.Context, sc scenario, l *lab, r *result) {
	rate := sc.jobRate
	if rate == 0 {
		rate = defaultJobRate
	}
	n := sc.jobCount()
	start := time.Now()
	tag, err := l.master.PublishAsync(harness.PublishOpts{Count: n, Rate: rate, Size: 463})
	if err != nil {
		b.Fatal(err)
	}
	var backAt []time.Time
	for _, bo := range sc.blackouts {
		time.Sleep(time.Until(start.Add(bo.at)))
		l.SetDown(true)
		time.Sleep(bo.length)
		l.SetDown(false)
		backAt = append(backAt, time.Now())
	}
	if _, err := l.master.WaitPublished(ctx, tag); err != nil {
		b.Fatal(err)
	}
	// Until every return has ended and every publication arrived — or, for a mode
	// that lost some, nothing changed for 10 s. Bounded: 3 minutes for all groups.
	sctx, scancel := context.WithTimeout(ctx, 3*time.Minute)
	var st harness.MinionStats
	for _, g := range l.groups {
		s, err := g.Settle(sctx, int64(n), 10*time.Second)
		if err != nil {
			b.Logf("%s: %v; measuring what arrived: %+v", g.Name, err, s)
		}
		add(&st, s)
	}
	scancel()
	r.expected = int64(r.minions * n)
	r.delivered = st.Pubs - st.Dup
	r.missing, r.outOfOrder = st.Missing, st.OutOfOrder
	r.returns, r.failed = st.Returns, st.ReqFailed
	r.samples, r.denom = samples(b, ctx, l.groups, true), int(r.expected)
	r.recoveryFirst, r.recoveryAll = -1, -1
	for _, t := range backAt {
		first, all := math.Inf(1), -1.0
		for _, g := range l.groups {
			rs, err := g.StatsSince(ctx, t)
			if err != nil || rs.Recovery == nil {
				b.Fatalf("recovery stats: %v", err)
			}
			if rs.Recovery.FirstMS >= 0 {
				first, all = math.Min(first, rs.Recovery.FirstMS), math.Max(all, rs.Recovery.AllMS)
			}
		}
		if !math.IsInf(first, 1) {
			r.recoveryFirst, r.recoveryAll = math.Max(r.recoveryFirst, first), math.Max(r.recoveryAll, all)
		}
	}
	// lost is filled in by run from the master's count.
	ms, err := l.master.Stats(ctx)
	if err != nil {
		b.Fatal(err)
	}
	r.lost = max(0, r.returns-ms.UniqueRIDs)
}

func runFiles(b *testing.B, ctx context.Context, sc scenario, l *lab, r *result) {
	req := harness.RequestOpts{Count: sc.chunks, Size: chunkReqSize, ReplySize: chunkSize, Tries: fileTries, Timeout: fileTryTimeout}
	var tags []string
	for _, g := range l.groups {
		tag, err := g.RequestAsync(req)
		if err != nil {
			b.Fatal(err)
		}
		tags = append(tags, tag)
	}
	for i, g := range l.groups {
		res, err := g.WaitRequest(ctx, tags[i])
		if err != nil {
			b.Fatal(err)
		}
		r.doneS = math.Max(r.doneS, res.ElapsedMS/1000)
	}
	var st harness.MinionStats
	for _, g := range l.groups {
		s, err := g.BriefStats(ctx)
		if err != nil {
			b.Fatal(err)
		}
		add(&st, s)
	}
	r.expected = int64(r.minions * sc.chunks)
	r.chunksOK, r.failed, r.retried, r.wrong = st.ReqOK, st.ReqFailed, st.ReqRetried, st.WrongReply
	r.samples, r.denom = samples(b, ctx, l.groups, false), int(r.expected)
}

func runShared(b *testing.B, ctx context.Context, sc scenario, l *lab, r *result) {
	l.TallyPort(bulkPort)
	bulk, err := l.StartBulk(l.NSB, l.NSA, bulkPort) // B to A, as the chunks go
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = bulk.Close() })
	time.Sleep(bulkLead)
	req := harness.RequestOpts{Count: sc.chunks, Size: chunkReqSize, ReplySize: chunkSize, Tries: fileTries, Timeout: fileTryTimeout}
	for _, g := range l.groups {
		if _, err := g.RequestAsync(req); err != nil { // more than the window takes: ended by the cleanup
			b.Fatal(err)
		}
	}
	time.Sleep(sharedWarm)
	type sample struct {
		at          time.Time
		ok, bulk    int64
		port, other [2]uint64
	}
	take := func() sample {
		s := sample{at: time.Now(), bulk: bulk.Bytes()}
		s.port, s.other = l.Tally()
		for _, g := range l.groups {
			st, err := g.BriefStats(ctx)
			if err != nil {
				b.Fatal(err)
			}
			s.ok += st.ReqOK
		}
		return s
	}
	s0 := take()
	time.Sleep(sc.window)
	s1 := take()
	dt := s1.at.Sub(s0.at).Seconds()
	capBps := float64(sc.profile.RateBps)
	r.chunksOK = s1.ok - s0.ok
	r.bulkMbps = float64(s1.bulk-s0.bulk) * 8 / dt / 1e6
	r.bulkShare = float64(s1.port[1]-s0.port[1]) * 8 / dt / capBps
	r.saltShare = float64(s1.other[1]-s0.other[1]) * 8 / dt / capBps
	r.bulkErr = bulk.Err()
	var st harness.MinionStats
	for _, g := range l.groups {
		s, err := g.BriefStats(ctx)
		if err != nil {
			b.Fatal(err)
		}
		add(&st, s)
	}
	r.failed, r.retried, r.wrong = st.ReqFailed, st.ReqRetried, st.WrongReply
	r.samples = samples(b, ctx, l.groups, false)
}

// add sums the counters of one minions process into st.
func add(st *harness.MinionStats, s harness.MinionStats) {
	st.Minions += s.Minions
	st.Pubs += s.Pubs
	st.Dup += s.Dup
	st.Missing += s.Missing
	st.OutOfOrder += s.OutOfOrder
	st.Returns += s.Returns
	st.ReqOK += s.ReqOK
	st.ReqFailed += s.ReqFailed
	st.ReqRetried += s.ReqRetried
	st.WrongReply += s.WrongReply
}

// samples merges every group's latency samples (ms, sorted).
func samples(b *testing.B, ctx context.Context, groups []*harness.Minions, returns bool) []float64 {
	var all []float64
	for _, g := range groups {
		s, err := g.Latencies(ctx, returns, 0)
		if err != nil {
			b.Fatal(err)
		}
		if s.Overflow > 0 {
			b.Logf("%s kept %d latency samples, %d more not kept", g.Name, s.Count, s.Overflow)
		}
		all = append(all, s.MS...)
	}
	slices.Sort(all)
	return all
}

// percentile is the nearest-rank percentile of sorted samples, as test/peers
// computes its own (peerlib.percentiles), so the tables read as before.
func percentile(s []float64, p float64) float64 {
	n := len(s)
	k := min(n-1, max(0, int(math.RoundToEven(p/100*float64(n)+0.5))-1))
	return s[k]
}

func edgeMetrics(p *harness.Pair) (reconnects, stalls float64) {
	reconnects, _ = p.Edge.Metric("salt_broker_edge_tunnel_reconnects_total")
	stalls, _ = p.Edge.Metric("salt_broker_edge_tunnel_stalls_total")
	return reconnects, stalls
}

func (r result) String() string {
	return fmt.Sprintf("expected %d delivered %d missing %d returns %d unique %d dup %d lost %d failed %d chunks %d retried %d wrong %d "+
		"master replies %d (%.1f MiB) done %.1f s salt share %.0f%% bulk %.2f Mbit/s (%.0f%%) bulk error %v p50 %.0f p99 %.0f ms "+
		"reconnects %.0f stalls %.0f; lab forwarded %d dropped %d (queue %d); %d samples",
		r.expected, r.delivered, r.missing, r.returns, r.unique, r.dup, r.lost, r.failed, r.chunksOK, r.retried, r.wrong,
		r.masterReplies, r.masterMiB, r.doneS, 100*r.saltShare, r.bulkMbps, 100*r.bulkShare, r.bulkErr, r.p50, r.p99,
		r.reconnects, r.stalls, r.labForward, r.labDropped, r.queueDropped, len(r.samples))
}

func report(all [][]result, at string) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "\nbroker at %s; ratios are against the direct link in this run\n", at)
	for i, sc := range scenarios {
		rs := all[i]
		if !slices.ContainsFunc(rs, func(r result) bool { return r.ran }) {
			continue // filtered out by -bench
		}
		n := sc.count()
		switch sc.kind {
		case jobs:
			rate := sc.jobRate
			if rate == 0 {
				rate = defaultJobRate
			}
			when := fmt.Sprintf("each answered %s–%s later", jobTimeMin, jobTimeMax)
			if sc.atOnce {
				when = "each answered at once"
			}
			fmt.Fprintf(w, "\n%s: %d minions, %d jobs at %g/s, %s by a return (retried after 5–10 s, 3 tries); return latency from the job's end to the reply, queueing and retries included\n",
				sc.name, n, sc.jobCount(), rate, when)
			fmt.Fprintln(w, "mode\tpubs delivered %\tmissing\treturns sent\tat master unique\tduplicated\tlost\tfailed at minion\treturn p50 ms\treturn p99 ms\tp50 ÷ direct\tp99 ÷ direct\trecovery first s\trecovery all s\tedge reconnects\tedge stalls\t")
			for j, mode := range modes {
				r := rs[j]
				if !r.ran {
					continue
				}
				fmt.Fprintf(w, "%s\t%.1f\t%d\t%d\t%d\t%d\t%d\t%d\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t\n", mode,
					100*float64(r.delivered)/float64(max(r.expected, 1)), r.missing, r.returns, r.unique, r.dup, r.lost, r.failed,
					r.p50, r.p99, ratio(r.p50, rs[0].p50, rs[0].ran), ratio(r.p99, rs[0].p99, rs[0].ran),
					secs(r.recoveryFirst), secs(r.recoveryAll), count(r.reconnects), count(r.stalls))
			}
		case files:
			fmt.Fprintf(w, "\n%s: %d minions each fetching %d × 1 MiB at once (%s per try, %d tries); latency from a chunk's first try to its reply\n",
				sc.name, n, sc.chunks, fileTryTimeout, fileTries)
			fmt.Fprintln(w, "mode\tchunks delivered\tof\tfailed\tretries\twrong reply\tat master unique\tduplicated\tMiB sent by master\tall done s\tdone ÷ direct\tchunk p50 s\tchunk p99 s\tedge reconnects\tedge stalls\t")
			for j, mode := range modes {
				r := rs[j]
				if !r.ran {
					continue
				}
				done, dr := "not done", "—"
				if r.chunksOK == r.expected {
					done = fmt.Sprintf("%.1f", r.doneS)
					if rs[0].chunksOK == rs[0].expected && rs[0].ran {
						dr = ratio(r.doneS, rs[0].doneS, true)
					}
				}
				fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t\n", mode,
					r.chunksOK, r.expected, r.failed, r.retried, r.wrong, r.unique, r.dup, r.masterMiB, done, dr,
					pctS(r, 50), pctS(r, 99), count(r.reconnects), count(r.stalls))
			}
		case shared:
			fmt.Fprintf(w, "\n%s: %d minions fetching 1 MiB chunks back to back beside one bulk TCP flow, measured over %s; shares of the %g Mbit/s cap from the IP bytes the lab delivered towards the minions\n",
				sc.name, n, sc.window, float64(sc.profile.RateBps)/1e6)
			// Chunks are counted whole, so in a window a few chunk times long their
			// goodput is coarse: the shares come from the lab's byte counts instead.
			fmt.Fprintln(w, "mode\tsalt share %\tbulk share %\tlink used %\tsalt ÷ bulk\tsalt share ÷ direct's\tbulk goodput Mbit/s\tchunks done in window\tfailed\tretries\tchunk p50 s\tchunk p99 s\tedge reconnects\tedge stalls\t")
			for j, mode := range modes {
				r := rs[j]
				if !r.ran {
					continue
				}
				fmt.Fprintf(w, "%s\t%.0f\t%.0f\t%.0f\t%.2f\t%s\t%.2f\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t\n", mode,
					100*r.saltShare, 100*r.bulkShare, 100*(r.saltShare+r.bulkShare), r.saltShare/math.Max(r.bulkShare, 1e-9),
					ratio(r.saltShare, rs[0].saltShare, rs[0].ran), r.bulkMbps, r.chunksOK, r.failed, r.retried,
					pctS(r, 50), pctS(r, 99), count(r.reconnects), count(r.stalls))
			}
		}
	}
	_ = w.Flush()
}

func ratio(v, direct float64, ran bool) string {
	if !ran || direct <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", v/direct)
}

func pctS(r result, p float64) string {
	if len(r.samples) == 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f", percentile(r.samples, p)/1000)
}

func count(v float64) string {
	if v < 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f", v)
}

func secs(ms float64) string {
	if ms < 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", ms/1000)
}
