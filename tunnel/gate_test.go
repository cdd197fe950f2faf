package tunnel

import (
	"context"
	"errors"
	"testing"
	"time"
)

// waitFor polls cond (the gate changes state from other goroutines) for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting until %s", what)
}

type admission struct {
	name    string
	release func()
	err     error
}

// acquireAsync starts an Acquire and reports its outcome on out.
func acquireAsync(ctx context.Context, g *Gate, name string, n, budget int64, out chan<- admission) {
	go func() {
		rel, err := g.Acquire(ctx, n, budget)
		out <- admission{name, rel, err}
	}()
}

func TestGateIsFIFO(t *testing.T) {
	const budget = 10
	var g Gate
	relA, err := g.Acquire(context.Background(), 8, budget)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan admission, 3)
	acquireAsync(context.Background(), &g, "B", 5, budget, out)
	waitFor(t, "B waits", func() bool { return g.Stats().Waiting == 1 })
	// C fits beside A (8+1 <= 10) but arrived after B: it must not overtake it.
	acquireAsync(context.Background(), &g, "C", 1, budget, out)
	waitFor(t, "C waits", func() bool { return g.Stats().Waiting == 2 })
	if st := g.Stats(); st.Holders != 1 || st.InFlight != 8 || st.WaitingBytes != 6 {
		t.Fatalf("C overtook B or the books are wrong: %+v", st)
	}
	if _, ok := g.TryAcquire(1, budget); ok {
		t.Fatal("TryAcquire jumped the queue")
	}
	relA()
	relA() // a second release changes nothing
	// B and C are admitted together (5+1 fit), in queue order; which goroutine
	// reports first is the scheduler's business.
	first, second := <-out, <-out
	if first.err != nil || second.err != nil || first.name == second.name {
		t.Fatalf("admitted %s (%v) and %s (%v); want B and C", first.name, first.err, second.name, second.err)
	}
	if st := g.Stats(); st.Holders != 2 || st.InFlight != 6 || st.Waiting != 0 {
		t.Fatalf("after A's release: %+v", st)
	}
	first.release()
	second.release()
	if st := g.Stats(); st != (GateStats{}) {
		t.Fatalf("after every release: %+v", st)
	}
}

// Release admits strictly in arrival order: B, then (only once B is done) C,
// though C alone would have fitted beside A.
func TestGateAdmitsInArrivalOrder(t *testing.T) {
	const budget = 10
	var g Gate
	relA, err := g.Acquire(context.Background(), 6, budget)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan admission, 2)
	acquireAsync(context.Background(), &g, "B", 9, budget, out)
	waitFor(t, "B waits", func() bool { return g.Stats().Waiting == 1 })
	acquireAsync(context.Background(), &g, "C", 4, budget, out)
	waitFor(t, "C waits", func() bool { return g.Stats().Waiting == 2 })
	relA()
	b := <-out
	if b.name != "B" || b.err != nil {
		t.Fatalf("first admitted after A: %s (%v), want B", b.name, b.err)
	}
	if st := g.Stats(); st.Waiting != 1 || st.InFlight != 9 {
		t.Fatalf("while B holds 9 of 10: %+v; want C waiting", st)
	}
	b.release()
	c := <-out
	if c.name != "C" || c.err != nil {
		t.Fatalf("then: %s (%v), want C", c.name, c.err)
	}
	c.release()
}

// One transfer larger than the whole budget still goes, alone.
func TestGateAdmitsAtLeastOne(t *testing.T) {
	var g Gate
	rel, err := g.Acquire(context.Background(), 100, 10)
	if err != nil {
		t.Fatalf("a transfer above the budget on an idle gate: %v", err)
	}
	if _, ok := g.TryAcquire(1, 10); ok {
		t.Fatal("a second transfer was admitted beside one that exceeds the budget")
	}
	out := make(chan admission, 1)
	acquireAsync(context.Background(), &g, "small", 1, 10, out)
	waitFor(t, "the small one waits", func() bool { return g.Stats().Waiting == 1 })
	rel()
	if a := <-out; a.err != nil {
		t.Fatal(a.err)
	} else {
		a.release()
	}
}

// A waiter whose context ends leaves the queue holding nothing, and those behind it
// move up; the holders' bytes stay theirs.
func TestGateCancelReleasesNothingItDidNotTake(t *testing.T) {
	const budget = 10
	var g Gate
	relA, err := g.Acquire(context.Background(), 8, budget)
	if err != nil {
		t.Fatal(err)
	}
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	outB, outC := make(chan admission, 1), make(chan admission, 1)
	acquireAsync(ctxB, &g, "B", 5, budget, outB)
	waitFor(t, "B waits", func() bool { return g.Stats().Waiting == 1 })
	acquireAsync(context.Background(), &g, "C", 2, budget, outC)
	waitFor(t, "C waits", func() bool { return g.Stats().Waiting == 2 })
	cancelB()
	b := <-outB
	if !errors.Is(b.err, context.Canceled) || b.release != nil {
		t.Fatalf("cancelled waiter: %v", b.err)
	}
	c := <-outC // B was what held C back: 8+2 fits
	if c.err != nil {
		t.Fatal(c.err)
	}
	if st := g.Stats(); st.InFlight != 10 || st.Holders != 2 || st.Waiting != 0 || st.WaitingBytes != 0 {
		t.Fatalf("after B's cancel: %+v; want A's 8 and C's 2 in flight, nobody waiting", st)
	}
	relA()
	c.release()
	if st := g.Stats(); st != (GateStats{}) {
		t.Fatalf("after every release: %+v", st)
	}
	// An already-ended context on an idle gate still admits: there is no wait.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if rel, err := g.Acquire(ctx, 1, budget); err != nil {
		t.Fatalf("idle gate, ended context: %v", err)
	} else {
		rel()
	}
}

// Many goroutines acquiring, cancelling and releasing at once leave the books at zero.
func TestGateConcurrentBooksBalance(t *testing.T) {
	var g Gate
	const budget = 1 << 20
	done := make(chan struct{})
	for i := range 64 {
		go func() {
			defer func() { done <- struct{}{} }()
			for j := range 50 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration((i+j)%3)*time.Millisecond)
				rel, err := g.Acquire(ctx, int64(100<<10+i*1000), budget)
				cancel()
				if err == nil {
					rel()
				}
			}
		}()
	}
	for range 64 {
		<-done
	}
	if st := g.Stats(); st != (GateStats{}) {
		t.Fatalf("after everything ended: %+v", st)
	}
}
