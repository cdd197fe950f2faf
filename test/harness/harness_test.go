package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		RemoveBuilds()
		os.Exit(code)
	}))
}

// waitMinions polls brief stats until cond holds or ctx ends.
func waitMinions(ctx context.Context, t *testing.T, m *Minions, cond func(MinionStats) bool) MinionStats {
	t.Helper()
	for {
		s, err := m.BriefStats(ctx)
		if err != nil {
			t.Fatalf("stats: %v", err)
		}
		if cond(s) {
			return s
		}
		select {
		case <-ctx.Done():
			t.Fatalf("condition not reached: %v; last stats %+v", context.Cause(ctx), s)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func checkPubs(t *testing.T, s MinionStats, want func(id string) int64) {
	t.Helper()
	for _, ms := range s.PerMinion {
		if ms.Pubs != want(ms.ID) || ms.Missing != 0 || ms.OutOfOrder != 0 || ms.Dup != 0 || ms.BadMultipart != 0 || ms.Foreign != 0 {
			t.Errorf("minion %s: %+v, want %d pubs in order", ms.ID, ms, want(ms.ID))
		}
	}
}

// TestPublishOrder: 20 minions on a master get every publication in order,
// single-frame and multipart, and with zmq_filtering only their own topics.
func TestPublishOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	const n = 20

	t.Run("all", func(t *testing.T) {
		master := StartMaster(t, MasterOpts{})
		mins := StartMinions(t, MinionOpts{PubPort: master.PubPort, RetPort: master.RetPort, Count: n})
		if err := WarmUp(ctx, master, mins); err != nil {
			t.Fatal(err)
		}
		r, err := master.Publish(ctx, PublishOpts{Count: 2000, Rate: 5000, Size: 500})
		if err != nil || r.Count != 2000 || r.FirstSeq != 1 || r.LastSeq != 2000 {
			t.Fatalf("publish: %+v %v", r, err)
		}
		topics := []string{"broadcast", TopicFor(mins.ID(3)), "syndic"}
		if _, err := master.Publish(ctx, PublishOpts{Count: 999, Rate: 5000, Size: 2000, Topics: topics}); err != nil {
			t.Fatal(err)
		}
		waitMinions(ctx, t, mins, func(s MinionStats) bool { return s.Pubs >= n*2999 })
		s, err := mins.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		checkPubs(t, s, func(string) int64 { return 2999 })
		t.Logf("20 minions x 2999 pubs: %d received, warm-ups %d", s.Pubs, s.Warmups)
	})

	t.Run("filtering", func(t *testing.T) {
		master := StartMaster(t, MasterOpts{})
		mins := StartMinions(t, MinionOpts{PubPort: master.PubPort, RetPort: master.RetPort, Count: n, Filtering: true})
		if err := WarmUp(ctx, master, mins); err != nil {
			t.Fatal(err)
		}
		// broadcast, then one topic for each of the first 10 minions, then one nobody wants.
		topics := []string{"broadcast"}
		for i := 0; i < 10; i++ {
			topics = append(topics, TopicFor(mins.ID(i)))
		}
		topics = append(topics, TopicFor("nobody"))
		const rounds = 100
		if _, err := master.Publish(ctx, PublishOpts{Count: rounds * len(topics), Rate: 5000, Size: 300, Topics: topics}); err != nil {
			t.Fatal(err)
		}
		want := func(id string) int64 {
			for i := 0; i < 10; i++ {
				if id == mins.ID(i) {
					return 2 * rounds
				}
			}
			return rounds
		}
		waitMinions(ctx, t, mins, func(s MinionStats) bool { return s.Pubs >= (n+10)*rounds })
		time.Sleep(200 * time.Millisecond) // anything unwanted still in flight arrives now
		s, err := mins.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.Pubs != (n+10)*rounds {
			t.Errorf("total pubs %d, want %d", s.Pubs, (n+10)*rounds)
		}
		checkPubs(t, s, want)
	})
}

// TestRequests: 200 minions, all at once, each gets its own reply from 0 B
// to 8 MiB; the master sees envelope depth 1 and no duplicate rid.
func TestRequests(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Second)
	defer cancel()
	const n = 200
	master := StartMaster(t, MasterOpts{})
	mins := StartMinions(t, MinionOpts{PubPort: master.PubPort, RetPort: master.RetPort, Count: n})
	rounds := []RequestOpts{
		{Count: 5, Size: 500, ReplySize: 0},
		{Count: 5, Size: 600, ReplySize: 99},
		{Count: 1, Size: 600, ReplySize: 1600, Kind: "auth"},
		{Count: 3, Size: 4500, ReplySize: 64 << 10},
		{Count: 1, Size: 500, ReplySize: 1<<20 + 133},
		{Count: 1, Size: 500, ReplySize: 8 << 20},
		{Count: 1, Size: 500, ReplySize: 8 << 20, Concurrency: 16},
	}
	var total int64
	for _, o := range rounds {
		// Timeouts generous enough that 200 x 8 MiB through one Python process never retries.
		o.Timeout = 30 * time.Second
		start := time.Now()
		r, err := mins.Request(ctx, o)
		if err != nil {
			t.Fatalf("request %+v: %v", o, err)
		}
		if r.Total != n*o.Count || r.OK != r.Total || r.Failed != 0 || r.WrongReply != 0 || r.Retried != 0 {
			t.Errorf("request %+v: %+v", o, r)
		}
		total += int64(r.Total)
		t.Logf("%d minions x %d %s requests, reply %d B, concurrency %d: %v (%.0f req/s)", n, o.Count, kindOf(o), o.ReplySize,
			o.Concurrency, time.Since(start).Round(time.Millisecond), float64(r.Total)/time.Since(start).Seconds())
	}
	ms, err := master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ms.Requests != total || ms.UniqueRIDs != total || ms.DupRIDs != 0 || ms.Bad != 0 || len(ms.Depth) != 1 || ms.Depth[1] != total {
		t.Errorf("master stats %+v, want %d requests at depth 1, no duplicates", ms, total)
	}
	s, err := mins.BriefStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("latency ms: %+v; minions RSS %s, master RSS %s", s.LatencyMS, rss(mins.Pid()), rss(master.Pid()))
}

func TestRequestAsyncAndLatencies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n, count = 4, 5
	master := StartMaster(t, MasterOpts{})
	mins := StartMinions(t, MinionOpts{PubPort: master.PubPort, RetPort: master.RetPort, Count: n})
	tag, err := mins.RequestAsync(RequestOpts{Count: count, Size: 300, ReplySize: 2000})
	if err != nil {
		t.Fatal(err)
	}
	// Another command answered while the requests run, without taking their event.
	if _, err := mins.BriefStats(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := mins.WaitRequest(ctx, tag)
	if err != nil {
		t.Fatal(err)
	}
	if r.Total != n*count || r.OK != r.Total {
		t.Fatalf("request: %+v", r)
	}
	all, err := mins.Latencies(ctx, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if all.Count != n*count || len(all.MS) != all.Count || len(all.Rank) != all.Count || !slices.IsSorted(all.MS) {
		t.Fatalf("all request latencies: %+v", all)
	}
	thin, err := mins.Latencies(ctx, false, 3)
	if err != nil {
		t.Fatal(err)
	}
	last := all.Count - 1
	if thin.Count != all.Count || !slices.Equal(thin.Rank, []int{0, last / 2, last}) ||
		!slices.Equal(thin.MS, []float64{all.MS[0], all.MS[last/2], all.MS[last]}) {
		t.Errorf("3 points of %v: %+v", all.MS, thin)
	}
	if ret, err := mins.Latencies(ctx, true, 0); err != nil || ret.Count != 0 {
		t.Errorf("return latencies without returns: %+v, %v", ret, err)
	}
}

func kindOf(o RequestOpts) string {
	if o.Kind == "" {
		return "aes"
	}
	return o.Kind
}

// TestRetry: replies held past the minion's timeout make it retry like Salt:
// a new socket (new routing identity), a new nonce, the same rid and length;
// the late reply to the old socket never reaches the minion.
func TestRetry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 4
	master := StartMaster(t, MasterOpts{})
	mins := StartMinions(t, MinionOpts{
		PubPort: master.PubPort, RetPort: master.RetPort, Count: n,
		ReturnTimeoutMin: 400 * time.Millisecond, ReturnTimeoutMax: 600 * time.Millisecond, Tries: 3,
	})
	if err := master.SetReplyPolicy(ctx, ReplyPolicy{Delay: 1500 * time.Millisecond, Tries: 1}); err != nil {
		t.Fatal(err)
	}

	t.Run("aes", func(t *testing.T) {
		r, err := mins.Request(ctx, RequestOpts{Count: 2, Size: 700, ReplySize: 200})
		if err != nil {
			t.Fatal(err)
		}
		if r.OK != 2*n || r.Retried != 2*n || r.WrongReply != 0 {
			t.Fatalf("result %+v, want %d ok after one retry each", r, 2*n)
		}
		ms, err := master.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := int64(2 * n)
		if ms.Requests != 2*want || ms.UniqueRIDs != want || ms.DupRIDs != want || ms.DupNewIdentity != want ||
			ms.DupNewNonce != want || ms.DupSameLength != want || ms.Delayed != want {
			t.Errorf("master %+v: want %d retries each with new identity, new nonce, same length", ms, want)
		}
	})

	t.Run("auth", func(t *testing.T) {
		if err := master.ResetStats(ctx); err != nil {
			t.Fatal(err)
		}
		r, err := mins.Request(ctx, RequestOpts{Count: 1, Size: 600, ReplySize: 1600, Kind: "auth"})
		if err != nil {
			t.Fatal(err)
		}
		if r.OK != n || r.Retried != n {
			t.Fatalf("result %+v", r)
		}
		ms, err := master.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Salt resends auth as identical bytes: same nonce, new socket.
		if ms.Auth != 2*n || ms.DupRIDs != n || ms.DupNewIdentity != n || ms.DupNewNonce != 0 || ms.DupSameLength != n {
			t.Errorf("master %+v: want identical auth retries on new sockets", ms)
		}
	})

	// The held replies are released to identities that are gone: ROUTER drops them.
	time.Sleep(1600 * time.Millisecond)
	s, err := mins.BriefStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.WrongReply != 0 || s.ReqFailed != 0 || s.ReqOK != 3*n {
		t.Errorf("minions after late replies: %+v", s)
	}
}

// TestReturnOnPublish: each publication makes every minion send one return
// whose rid names the minion and the sequence, as a job return would.
func TestReturnOnPublish(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n, pubs = 10, 50
	master := StartMaster(t, MasterOpts{})
	mins := StartMinions(t, MinionOpts{PubPort: master.PubPort, RetPort: master.RetPort, Count: n, ReturnOnPublish: true})
	if err := WarmUp(ctx, master, mins); err != nil {
		t.Fatal(err)
	}
	if _, err := master.Publish(ctx, PublishOpts{Count: pubs, Rate: 1000, Size: 400}); err != nil {
		t.Fatal(err)
	}
	s := waitMinions(ctx, t, mins, func(s MinionStats) bool { return s.ReqOK >= n*pubs })
	if s.Returns != n*pubs || s.ReqFailed != 0 || s.WrongReply != 0 || s.Pubs != n*pubs {
		t.Errorf("minions %+v", s)
	}
	ms, err := master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ms.AES != n*pubs || ms.UniqueRIDs != n*pubs || ms.DupRIDs != 0 {
		t.Errorf("master %+v", ms)
	}
}

// TestForwarder: the old pattern adds one routing frame (depth 2) and passes
// publications and replies through.
func TestForwarder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	master := StartMaster(t, MasterOpts{})
	fw := StartForwarder(t, ForwarderOpts{
		PubPort: master.PubPort, RetPort: master.RetPort, Bind: "127.0.0.2",
	})
	mins := StartMinions(t, MinionOpts{Master: "127.0.0.2", PubPort: master.PubPort, RetPort: master.RetPort, Count: 10})
	if err := WarmUp(ctx, master, mins); err != nil {
		t.Fatal(err)
	}
	if _, err := master.Publish(ctx, PublishOpts{Count: 500, Rate: 5000, Size: 400}); err != nil {
		t.Fatal(err)
	}
	r, err := mins.Request(ctx, RequestOpts{Count: 3, Size: 500, ReplySize: 1000})
	if err != nil || r.OK != 30 {
		t.Fatalf("requests through forwarder: %+v %v", r, err)
	}
	s := waitMinions(ctx, t, mins, func(s MinionStats) bool { return s.Pubs >= 5000 })
	if s.Missing != 0 || s.OutOfOrder != 0 || s.Dup != 0 {
		t.Errorf("pubs through forwarder: %+v", s)
	}
	ms, err := master.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ms.Depth[2] != 30 || len(ms.Depth) != 1 {
		t.Errorf("depth %v, want all 30 at depth 2", ms.Depth)
	}
	if err := fw.Stop(5 * time.Second); err != nil {
		t.Errorf("forwarder stop: %v", err)
	}
}

// TestProc covers the process plumbing: exit before an event, kill of the
// whole group, clean stop, and a Wrap prefix.
func TestProc(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	p := Start(t, "echo", exec.Command("/bin/sh", "-c", `echo '{"event":"hello","n":1}'; echo plain; echo oops >&2; exit 3`))
	ev, err := p.WaitEvent(ctx, "hello")
	if err != nil || ev["n"] != 1.0 {
		t.Fatalf("hello: %v %v", ev, err)
	}
	if _, err := p.WaitEvent(ctx, "never"); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("want exit error, got %v", err)
	}
	if !strings.Contains(p.Stderr(), "oops") || !strings.Contains(p.Dump(), "stdout: plain") {
		t.Errorf("dump: %s", p.Dump())
	}

	// A child of the peer is in its process group and dies with it.
	g := Start(t, "group", exec.Command("/bin/sh", "-c", `sleep 60 & echo "{\"event\":\"child\",\"pid\":$!}"; wait`))
	ev, err = g.WaitEvent(ctx, "child")
	if err != nil {
		t.Fatal(err)
	}
	g.Kill()
	<-g.Done()
	child := int(ev["pid"].(float64))
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(child) {
		if time.Now().After(deadline) {
			t.Fatalf("child %d survived the group kill", child)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Stop on a real peer exits cleanly; Wrap sees the command.
	wrapped := false
	m := StartMaster(t, MasterOpts{Wrap: func(c *exec.Cmd) *exec.Cmd { wrapped = true; return c }})
	if !wrapped {
		t.Error("Wrap not called")
	}
	if err := m.Stop(5 * time.Second); err != nil {
		t.Errorf("master stop: %v", err)
	}
	if err := m.Send(map[string]any{"cmd": "stats"}); err == nil {
		t.Error("send after stop succeeded")
	}
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie (state Z) is dead for our purpose.
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

func rss(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			return "peak " + strings.Join(strings.Fields(l)[1:], " ")
		}
	}
	return "?"
}

// TestBuildBroker: the broker binary builds once per test binary.
func TestBuildBroker(t *testing.T) {
	p := BuildBroker(t)
	st, err := os.Stat(p)
	if err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("broker binary %s: %v %v", p, st, err)
	}
	if again := BuildBroker(t); again != p {
		t.Errorf("second build at %s, first at %s", again, p)
	}
}
