// Package demo runs the whole pair on loopback with nothing but the binary: a
// simulated Salt master and minions (zmq4, in process), a core and an edge with
// ephemeral certificates, jobs published and returns collected, and a short human
// summary of what crossed the tunnel.
package demo

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/salt-broker/salt-broker/certs"
	"github.com/salt-broker/salt-broker/core"
	"github.com/salt-broker/salt-broker/edge"
	"github.com/salt-broker/salt-broker/tunnel"
)

// Options size the demo.
type Options struct {
	Minions int
	Jobs    int
	Out     io.Writer
	Logger  *slog.Logger // the broker's own logs; nil discards them
}

// Run runs the demo and returns an error unless everything arrived.
func Run(ctx context.Context, o Options) error {
	if o.Minions <= 0 {
		o.Minions = 5
	}
	if o.Jobs <= 0 {
		o.Jobs = 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out := o.Out
	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	masterPub, masterRet, edgePub, edgeRet := ports[0], ports[1], ports[2], ports[3]

	fmt.Fprintf(out, "salt-broker demo: %d simulated minions, %d jobs, everything on loopback\n", o.Minions, o.Jobs)
	pki, err := certs.NewEphemeral([]string{"127.0.0.1"})
	if err != nil {
		return fmt.Errorf("ephemeral certificates: %w", err)
	}

	m, err := startMaster(ctx, masterPub, masterRet)
	if err != nil {
		return err
	}
	defer m.close()
	fmt.Fprintf(out, "  master (simulated)  PUB tcp://127.0.0.1:%d  ROUTER tcp://127.0.0.1:%d\n", masterPub, masterRet)

	k, err := core.New(core.Config{
		Name: "demo-core", MasterHost: "127.0.0.1", MasterPubPort: masterPub, MasterRetPort: masterRet,
		Listen: "127.0.0.1:0", Tunnel: tunnel.Config{TLS: pki.Server, Logger: o.Logger}, Logger: o.Logger,
	})
	if err != nil {
		return err
	}
	e, err := edge.New(edge.Config{
		Name: "demo-edge", CoreAddr: k.Addr().String(), Bind: "127.0.0.1", PubPort: edgePub, RetPort: edgeRet,
		Tunnel: tunnel.Config{TLS: pki.Client, Logger: o.Logger}, Dial: tunnel.DialOptions{Mode: tunnel.ModeQUIC}, Logger: o.Logger,
	})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	runCtx, stopBroker := context.WithCancel(context.Background())
	defer stopBroker()
	wg.Go(func() { _ = k.Run(runCtx) })
	wg.Go(func() { _ = e.Run(runCtx) })
	fmt.Fprintf(out, "  core                QUIC %s  → master\n", k.Addr())
	fmt.Fprintf(out, "  edge                PUB tcp://127.0.0.1:%d  ROUTER tcp://127.0.0.1:%d  → core (QUIC, mutual TLS)\n", edgePub, edgeRet)

	minions := make([]*minion, o.Minions)
	for i := range minions {
		if minions[i], err = startMinion(ctx, fmt.Sprintf("minion-%02d", i+1), edgePub, edgeRet); err != nil {
			return err
		}
		defer minions[i].close()
	}
	if err := waitReady(ctx, e, m, minions); err != nil {
		return err
	}

	start := time.Now()
	var mwg sync.WaitGroup
	results := make([]minionResult, len(minions))
	for i, mn := range minions {
		mwg.Go(func() { results[i] = mn.run(ctx, o.Jobs) })
	}
	for j := 1; j <= o.Jobs; j++ {
		if err := m.publish(j); err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	mwg.Wait()
	elapsed := time.Since(start)

	var lat []time.Duration
	pubsOK, inOrder := 0, true
	var failures []string
	for i, r := range results {
		lat = append(lat, r.latencies...)
		if r.received == o.Jobs {
			pubsOK++
		}
		inOrder = inOrder && r.inOrder
		if r.err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", minions[i].id, r.err))
		}
	}
	returns, dups := m.counts()
	slices.Sort(lat)
	st := e.Status()
	fmt.Fprintf(out, "\nWhat crossed the tunnel (%s, RTT %.2f ms):\n", st.Transport, st.RTTMillis)
	fmt.Fprintf(out, "  publications  master → %d minions: %d jobs each, %d/%d minions got all, in order: %v\n", len(minions), o.Jobs, pubsOK, len(minions), inOrder)
	fmt.Fprintf(out, "  returns       %d minions → master: %d of %d arrived, %d duplicated\n", len(minions), returns, len(minions)*o.Jobs, dups)
	if len(lat) > 0 {
		fmt.Fprintf(out, "  return round trip through edge+core: p50 %s, p99 %s, max %s\n",
			pct(lat, 50), pct(lat, 99), lat[len(lat)-1].Round(time.Microsecond))
	}
	fmt.Fprintf(out, "  elapsed %s\n", elapsed.Round(time.Millisecond))
	ok := pubsOK == len(minions) && inOrder && returns == len(minions)*o.Jobs && dups == 0 && len(failures) == 0
	if !ok {
		for _, f := range failures {
			fmt.Fprintln(out, "  FAILED", f)
		}
		return errors.New("demo: not everything arrived (see above)")
	}
	fmt.Fprintln(out, "\nOK: every publication reached every minion in order, every return reached the master exactly once.")
	return nil
}

func pct(sorted []time.Duration, p int) time.Duration {
	i := min(len(sorted)-1, len(sorted)*p/100)
	return sorted[i].Round(time.Microsecond)
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitReady publishes warm-ups until every minion has one: a SUB receives only what
// is published after its subscription reached the PUB.
func waitReady(ctx context.Context, e *edge.Edge, m *master, minions []*minion) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if e.Ready() {
			_ = m.publish(0)
		}
		all := true
		for _, mn := range minions {
			all = all && mn.warm()
		}
		if all {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("demo: minions did not receive warm-up publications within 20 s")
}

// master plays the Salt master: PUB for jobs, ROUTER answering every request.
type master struct {
	pub, router zmq4.Socket
	cancel      context.CancelFunc
	wg          sync.WaitGroup

	mu   sync.Mutex
	seen map[string]int
}

func startMaster(ctx context.Context, pubPort, retPort int) (*master, error) {
	ctx, cancel := context.WithCancel(ctx)
	m := &master{pub: zmq4.NewPub(ctx), router: zmq4.NewRouter(ctx), cancel: cancel, seen: map[string]int{}}
	if err := m.pub.Listen("tcp://127.0.0.1:" + strconv.Itoa(pubPort)); err != nil {
		m.close()
		return nil, fmt.Errorf("simulated master PUB: %w", err)
	}
	if err := m.router.Listen("tcp://127.0.0.1:" + strconv.Itoa(retPort)); err != nil {
		m.close()
		return nil, fmt.Errorf("simulated master ROUTER: %w", err)
	}
	m.wg.Go(func() {
		for {
			msg, err := m.router.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			if msg.Type != zmq4.UsrMsg || len(msg.Frames) < 2 {
				continue
			}
			body := msg.Frames[len(msg.Frames)-1]
			m.mu.Lock()
			m.seen[string(body)]++
			m.mu.Unlock()
			reply := append(slices.Clone(msg.Frames[:len(msg.Frames)-1]), append([]byte("ack:"), body...))
			_ = m.router.SendMulti(zmq4.NewMsgFrom(reply...))
		}
	})
	return m, nil
}

func (m *master) publish(job int) error {
	payload := binary.BigEndian.AppendUint32([]byte("job"), uint32(job))
	return m.pub.SendMulti(zmq4.NewMsgFrom([]byte("broadcast"), payload))
}

func (m *master) counts() (returns, dups int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, n := range m.seen {
		returns++
		dups += n - 1
	}
	return
}

func (m *master) close() {
	m.cancel()
	_ = m.pub.Close()
	_ = m.router.Close()
	m.wg.Wait()
}

// minion plays a Salt minion: SUB for jobs, REQ for returns.
type minion struct {
	id       string
	sub, req zmq4.Socket
	cancel   context.CancelFunc
	jobs     chan uint32
	wg       sync.WaitGroup

	mu     sync.Mutex
	warmed bool
}

type minionResult struct {
	received  int
	inOrder   bool
	latencies []time.Duration
	err       error
}

func startMinion(ctx context.Context, id string, pubPort, retPort int) (*minion, error) {
	ctx, cancel := context.WithCancel(ctx)
	mn := &minion{id: id, sub: zmq4.NewSub(ctx), req: zmq4.NewReq(ctx), cancel: cancel, jobs: make(chan uint32, 1024)}
	if err := mn.sub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		mn.close()
		return nil, err
	}
	if err := mn.sub.Dial("tcp://127.0.0.1:" + strconv.Itoa(pubPort)); err != nil {
		mn.close()
		return nil, fmt.Errorf("%s SUB: %w", id, err)
	}
	if err := mn.req.Dial("tcp://127.0.0.1:" + strconv.Itoa(retPort)); err != nil {
		mn.close()
		return nil, fmt.Errorf("%s REQ: %w", id, err)
	}
	mn.wg.Go(func() {
		defer close(mn.jobs)
		for {
			msg, err := mn.sub.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			if len(msg.Frames) != 2 || string(msg.Frames[0]) != "broadcast" || len(msg.Frames[1]) != 7 {
				continue
			}
			job := binary.BigEndian.Uint32(msg.Frames[1][3:])
			if job == 0 {
				mn.mu.Lock()
				mn.warmed = true
				mn.mu.Unlock()
				continue
			}
			select {
			case mn.jobs <- job:
			default:
			}
		}
	})
	return mn, nil
}

func (mn *minion) warm() bool {
	mn.mu.Lock()
	defer mn.mu.Unlock()
	return mn.warmed
}

// run receives n jobs and answers each with a return, as a minion does.
func (mn *minion) run(ctx context.Context, n int) minionResult {
	r := minionResult{inOrder: true}
	last := uint32(0)
	for r.received < n {
		var job uint32
		select {
		case j, ok := <-mn.jobs:
			if !ok {
				r.err = errors.New("subscription closed")
				return r
			}
			job = j
		case <-ctx.Done():
			r.err = fmt.Errorf("got %d of %d jobs", r.received, n)
			return r
		}
		r.received++
		if job != last+1 {
			r.inOrder = false
		}
		last = job
		ret := saltReturn(mn.id, job)
		t0 := time.Now()
		if err := mn.req.Send(zmq4.NewMsg(ret)); err != nil {
			r.err = fmt.Errorf("send return: %w", err)
			return r
		}
		rep, err := mn.req.Recv()
		if err != nil {
			r.err = fmt.Errorf("receive reply: %w", err)
			return r
		}
		if len(rep.Frames) != 1 || string(rep.Frames[0]) != "ack:"+string(ret) {
			r.err = errors.New("wrong reply")
			return r
		}
		r.latencies = append(r.latencies, time.Since(t0))
	}
	return r
}

func (mn *minion) close() {
	mn.cancel()
	_ = mn.sub.Close()
	_ = mn.req.Close()
	mn.wg.Wait()
}

// saltReturn builds a Salt-shaped AES request envelope, msgpack
// {enc: "aes", id: <minion id>, load: <bytes>}, so the edge classes it as Salt would.
func saltReturn(id string, job uint32) []byte {
	load := fmt.Appendf(nil, "return of job %d from %s", job, id)
	b := []byte{0x83}
	str := func(s string) { b = append(b, 0xa0|byte(len(s))); b = append(b, s...) }
	str("enc")
	str("aes")
	str("id")
	str(id)
	str("load")
	b = append(b, 0xc4, byte(len(load)))
	return append(b, load...)
}
