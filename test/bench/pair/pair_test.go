// Package pair benchmarks the three ways minions can reach a master, side by side in
// one run with the same libzmq peers: direct, through the old salt-broker pattern (a
// plain pyzmq forwarder), and through edge + core. Run with `make bench`; it prints
// figures and ratios, never a pass/fail on timing.
package pair

import (
	"context"
	"fmt"
	"os"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/salt-broker/salt-broker/test/harness"
)

// The broker is measured as operators run it: built without the race detector.
func TestMain(m *testing.M) {
	harness.RaceBuild = false
	harness.Main(m)
}

type figures struct {
	p50, p99    float64 // ms, 1 KiB request round trip
	pubRate     float64 // msgs/s of 1 KiB delivered to each of 10 subscribers
	pubDelivery float64 // % delivered
	fileMBps    float64 // 8 MiB replies, one minion, sequential
}

// target is where minions connect for one mode.
type target struct {
	name         string
	ip           string
	pubPort, ret int
	master       *harness.Master
}

func BenchmarkModes(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	m := harness.StartMaster(b, harness.MasterOpts{})
	fwPub, fwRet := harness.FreePort(b, "127.0.0.3"), harness.FreePort(b, "127.0.0.3")
	harness.StartForwarder(b, harness.ForwarderOpts{Master: "127.0.0.1", PubPort: m.PubPort, RetPort: m.RetPort,
		Bind: "127.0.0.3", BindPubPort: fwPub, BindRetPort: fwRet})
	pair := harness.StartPair(b, harness.PairOpts{MasterPubPort: m.PubPort, RetPort: m.RetPort})
	targets := []target{
		{"direct", "127.0.0.1", m.PubPort, m.RetPort, m},
		{"old forwarder", "127.0.0.3", fwPub, fwRet, m},
		{"edge + core", pair.EdgeIP, pair.EdgePub, pair.EdgeRet, m},
	}
	results := make([]figures, len(targets))
	for i, tg := range targets {
		results[i] = measure(ctx, b, tg)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "mode\treq p50 ms\treq p99 ms\tpub msgs/s ×10 subs\tpub delivered %\tfile MB/s (8 MiB replies)\t")
	for i, tg := range targets {
		r := results[i]
		fmt.Fprintf(w, "%s\t%.3f\t%.3f\t%.0f\t%.1f\t%.1f\t\n", tg.name, r.p50, r.p99, r.pubRate, r.pubDelivery, r.fileMBps)
	}
	d, f, p := results[0], results[1], results[2]
	fmt.Fprintf(w, "pair − direct\t%+.3f\t%+.3f\t%.2f×\t\t%.2f×\t\n", p.p50-d.p50, p.p99-d.p99, p.pubRate/d.pubRate, p.fileMBps/d.fileMBps)
	fmt.Fprintf(w, "pair vs forwarder\t%+.3f\t%+.3f\t%.2f×\t\t%.2f×\t\n", p.p50-f.p50, p.p99-f.p99, p.pubRate/f.pubRate, p.fileMBps/f.fileMBps)
	_ = w.Flush()
}

func measure(ctx context.Context, b *testing.B, tg target) figures {
	var out figures
	one := harness.StartMinions(b, harness.MinionOpts{Master: tg.ip, PubPort: tg.pubPort, RetPort: tg.ret, Count: 1, IDPrefix: "rtt"})
	if _, err := one.Request(ctx, harness.RequestOpts{Count: 50, Size: 1024, ReplySize: 1024}); err != nil { // warm-up
		b.Fatal(err)
	}
	_ = one.ResetStats(ctx)
	if _, err := one.Request(ctx, harness.RequestOpts{Count: 2000, Size: 1024, ReplySize: 1024}); err != nil {
		b.Fatal(err)
	}
	st, err := one.BriefStats(ctx)
	if err != nil {
		b.Fatal(err)
	}
	out.p50, out.p99 = st.LatencyMS.P50, st.LatencyMS.P99

	_ = one.ResetStats(ctx)
	const files = 10
	start := time.Now()
	res, err := one.Request(ctx, harness.RequestOpts{Count: files, Size: 500, ReplySize: 8 << 20, Timeout: 60 * time.Second})
	if err != nil || res.OK != files {
		b.Fatalf("%s file transfer: %+v %v", tg.name, res, err)
	}
	out.fileMBps = float64(files*8) / time.Since(start).Seconds()
	one.Kill()

	// Ten subscribers in ten processes, so one Python process is not what is measured.
	var subs []*harness.Minions
	for i := range 10 {
		subs = append(subs, harness.StartMinions(b, harness.MinionOpts{Master: tg.ip, PubPort: tg.pubPort, RetPort: tg.ret, Count: 1, IDPrefix: fmt.Sprintf("sub%d-", i)}))
	}
	if err := harness.WarmUp(ctx, tg.master, subs...); err != nil {
		b.Fatal(err)
	}
	for _, s := range subs {
		_ = s.ResetStats(ctx)
	}
	const n = 20000
	start = time.Now()
	if _, err := tg.master.Publish(ctx, harness.PublishOpts{Count: n, Size: 1024}); err != nil {
		b.Fatal(err)
	}
	var got int64
	deadline := time.Now().Add(60 * time.Second)
	last, lastChange := int64(-1), time.Now()
	for time.Now().Before(deadline) {
		got = 0
		for _, sub := range subs {
			s, err := sub.BriefStats(ctx)
			if err != nil {
				b.Fatal(err)
			}
			got += s.Pubs
		}
		if got != last {
			last, lastChange = got, time.Now()
		}
		if got >= 10*n || time.Since(lastChange) > 2*time.Second {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := lastChange.Sub(start).Seconds()
	out.pubRate = float64(got) / 10 / elapsed
	out.pubDelivery = 100 * float64(got) / float64(10*n)
	for _, s := range subs {
		s.Kill()
	}
	return out
}
