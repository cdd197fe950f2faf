// Command zmtp benchmarks internal/zmtp against libzmq (pyzmq) and zmq4 with the same
// libzmq clients, side by side in one run: ROUTER round trips with 50 and 500 REQ
// clients, PUB fan-out of 1 KiB messages to 3 and 100 SUBs, and memory per idle peer.
// It prints figures and ratios against libzmq; it never fails on a timing.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/salt-broker/salt-broker/internal/zmtp"
)

const python = "/usr/bin/python3"

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func main() {
	serveIdle := flag.Bool("serve-idle", false, "internal: serve a PUB and report its RSS (child process)")
	peers := flag.Int("idle-peers", 10000, "idle peers for the memory figure")
	runs := flag.Int("runs", 2, "runs of each throughput case, implementations interleaved; the best counts (other load on the machine only ever slows a run down)")
	only := flag.String("only", "router,pub,mem", "which benchmarks to run (comma-separated: router, pub, mem)")
	flag.Parse()
	run := func(name string) bool { return strings.Contains(*only, name) }
	raiseNoFile()
	if *serveIdle {
		serveIdlePub()
		return
	}
	fmt.Printf("clients: pyzmq (libzmq %s) in several processes; %d CPUs shared by server and clients; best of %d runs\n", libzmqVersion(), runtime.NumCPU(), *runs)
	// Fixed widths rather than a tabwriter: rows are printed as each case ends,
	// so a long run shows progress, and columns still line up.
	const nameW = 62
	fmt.Printf("%-*s %9s %9s %9s %12s %12s\n", nameW, "benchmark", "libzmq", "zmq4", "ours", "ours/libzmq", "zmq4/libzmq")
	row := func(name string, v [3]float64, format string) {
		c := func(x float64) string { return fmt.Sprintf(format, x) }
		fmt.Printf("%-*s %9s %9s %9s %11.2f× %11.2f×\n", nameW, name, c(v[0]), c(v[1]), c(v[2]), v[2]/v[0], v[1]/v[0])
	}
	for _, clients := range []int{50, 500} {
		if !run("router") {
			break
		}
		var r, cpu [3]float64
		for range *runs {
			for i, impl := range []string{"libzmq", "zmq4", "ours"} {
				if rate, c := routerRate(impl, clients); rate > r[i] {
					r[i], cpu[i] = rate, c
				}
			}
		}
		row(fmt.Sprintf("ROUTER req/s, %d REQ clients", clients), r, "%.0f")
		row("  server CPU µs per request", cpu, "%.1f")
	}
	for _, subs := range []int{3, 100} {
		if !run("pub") {
			break
		}
		var r [3]float64
		var pct, cpu [3]float64
		for range *runs {
			for i, impl := range []string{"libzmq", "zmq4", "ours"} {
				if rate, p, c := pubRate(impl, subs); rate > r[i] {
					r[i], pct[i], cpu[i] = rate, p, c
				}
			}
		}
		row(fmt.Sprintf("PUB 1 KiB msgs/s per SUB, %d SUBs (delivered %.0f%%/%.0f%%/%.0f%%)", subs, pct[0], pct[1], pct[2]), r, "%.0f")
		row("  server CPU µs per delivered message", cpu, "%.2f")
	}
	if !run("mem") {
		return
	}
	kib := idleMemory(*peers)
	fmt.Printf("%-*s %9s %9s %9s\n", nameW, fmt.Sprintf("memory per idle peer (RSS), %d peers", *peers), "", "", fmt.Sprintf("%.1f KiB", kib))
}

func libzmqVersion() string {
	out, err := exec.Command(python, "-c", "import zmq; print(zmq.zmq_version())").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func raiseNoFile() {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, "raise open files limit:", err)
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proc is a python peer with its JSON output.
type proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan map[string]any
}

func startPy(args ...string) *proc {
	dir, _ := os.Getwd()
	script := filepath.Join(dir, "test/bench/zmtp/peers.py")
	if _, err := os.Stat(script); err != nil {
		exe, _ := os.Executable()
		script = filepath.Join(filepath.Dir(exe), "peers.py")
	}
	cmd := exec.Command(python, append([]string{"-u", script}, args...)...)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	p := &proc{cmd: cmd, stdin: stdin, lines: make(chan map[string]any, 16)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				p.lines <- m
			}
		}
		close(p.lines)
	}()
	return p
}

func (p *proc) wait(event string) map[string]any {
	timeout := time.After(120 * time.Second)
	for {
		select {
		case m, ok := <-p.lines:
			if !ok {
				panic("peer exited before " + event)
			}
			if m["event"] == event {
				return m
			}
		case <-timeout:
			panic("timeout waiting for " + event)
		}
	}
}

func (p *proc) stop() {
	_ = p.stdin.Close()
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

func f64(v any) float64 { f, _ := v.(float64); return f }

// routerRate runs clients REQ sockets (in two libzmq processes) against one server.
// It also returns the server's CPU time per request in µs.
func routerRate(impl string, clients int) (rate, cpuUS float64) {
	port := freePort()
	ep := "tcp://127.0.0.1:" + strconv.Itoa(port)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := func() {}
	cpu := selfCPU
	switch impl {
	case "libzmq":
		p := startPy("router", ep)
		p.wait("ready")
		stop = p.stop
		cpu = func() time.Duration { return procCPU(p.cmd.Process.Pid) }
	case "zmq4":
		r := zmq4.NewRouter(ctx)
		if err := r.Listen(ep); err != nil {
			panic(err)
		}
		go func() {
			for {
				m, err := r.Recv()
				if err != nil {
					return
				}
				_ = r.SendMulti(m)
			}
		}()
		stop = func() { cancel(); _ = r.Close() }
	case "ours":
		r, err := zmtp.ListenRouter("127.0.0.1:"+strconv.Itoa(port), zmtp.Options{Logger: quiet})
		if err != nil {
			panic(err)
		}
		go func() {
			for {
				m, err := r.Recv(ctx)
				if err != nil {
					return
				}
				_ = r.Send(m.Identity, m.Frames)
			}
		}()
		stop = func() { cancel(); _ = r.Close() }
	}
	defer stop()
	const procs = 2
	var wg sync.WaitGroup
	var mu sync.Mutex
	total, longest := 0.0, 0.0
	cpu0 := cpu()
	for i := 0; i < procs; i++ {
		wg.Go(func() {
			p := startPy("req", ep, "--clients", strconv.Itoa(clients/procs), "--seconds", "3")
			d := p.wait("done")
			p.stop()
			mu.Lock()
			total += f64(d["count"])
			longest = max(longest, f64(d["elapsed"]))
			mu.Unlock()
		})
	}
	wg.Wait()
	// Clients connect and count in parallel, so CPU over the whole phase is close to
	// CPU over the counted seconds.
	return total / longest, float64(cpu()-cpu0) / float64(time.Microsecond) / total
}

// pubRate publishes 1 KiB messages as fast as the server takes them to subs libzmq SUBs.
// It also returns the server's CPU time per delivered message in µs.
func pubRate(impl string, subs int) (perSub, deliveredPct, cpuUS float64) {
	port := freePort()
	ep := "tcp://127.0.0.1:" + strconv.Itoa(port)
	count := 20000
	if subs > 10 {
		count = 5000
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msg := make([]byte, 1024)
	var publish func()
	stop := func() {}
	cpu := selfCPU
	switch impl {
	case "libzmq":
		p := startPy("pub", ep, "--count", strconv.Itoa(count))
		p.wait("ready")
		cpu = func() time.Duration { return procCPU(p.cmd.Process.Pid) }
		publish = func() { _, _ = io.WriteString(p.stdin, "go\n"); p.wait("done") }
		stop = p.stop
	case "zmq4":
		pub := zmq4.NewPub(ctx)
		if err := pub.Listen(ep); err != nil {
			panic(err)
		}
		publish = func() {
			for i := 0; i < count; i++ {
				_ = pub.SendMulti(zmq4.NewMsg(msg))
			}
		}
		stop = func() { cancel(); _ = pub.Close() }
	case "ours":
		// The queue holds the whole burst, as libzmq's SNDHWM=0 does on its side: the
		// figure is then the delivery rate, not how much a full queue drops.
		pub, err := zmtp.ListenPub("127.0.0.1:"+strconv.Itoa(port), zmtp.Options{Logger: quiet, SendQueue: count + 100, SendQueueBytes: int64(count+100) * int64(len(msg))})
		if err != nil {
			panic(err)
		}
		publish = func() {
			for i := 0; i < count; i++ {
				pub.Publish([][]byte{msg})
			}
		}
		stop = func() { _ = pub.Close() }
	}
	defer stop()
	procs := min(subs, 4)
	var ps []*proc
	for i := 0; i < procs; i++ {
		n := subs / procs
		if i < subs%procs {
			n++
		}
		p := startPy("sub", ep, "--clients", strconv.Itoa(n), "--idle", "1.5")
		p.wait("ready")
		ps = append(ps, p)
	}
	time.Sleep(1500 * time.Millisecond) // subscriptions reach the publisher
	cpu0 := cpu()
	publish()
	got, longest := 0.0, 0.0
	var cpu1 time.Duration
	for i, p := range ps {
		d := p.wait("done")
		if i == 0 {
			cpu1 = cpu() // the server is idle once the first SUB saw its last message
		}
		got += f64(d["count"])
		longest = max(longest, f64(d["elapsed"]))
		p.stop()
	}
	if longest == 0 {
		return 0, 0, 0
	}
	return got / float64(subs) / longest, 100 * got / float64(subs*count), float64(cpu1-cpu0) / float64(time.Microsecond) / got
}

// idleMemory starts a child serving PUB, connects n handshaken idle SUB peers, and
// reads the child's RSS growth per peer.
func idleMemory(n int) float64 {
	exe, _ := os.Executable()
	cmd := exec.Command(exe, "-serve-idle")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	rd := bufio.NewReader(stdout)
	line := func() string { s, _ := rd.ReadString('\n'); return strings.TrimSpace(s) }
	addr := line()
	rss0 := rssKiB(cmd.Process.Pid)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	hello := subHello()
	buf := make([]byte, 64+64)
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "idle peers: stopped at", i, err)
			n = i
			break
		}
		_, _ = c.Write(hello)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.ReadAtLeast(c, buf, 64+2)
		conns = append(conns, c)
	}
	_, _ = io.WriteString(stdin, "settle\n")
	line()
	time.Sleep(time.Second)
	rss1 := rssKiB(cmd.Process.Pid)
	return float64(rss1-rss0) / float64(n)
}

// subHello is a SUB's greeting, READY and subscription to everything.
func subHello() []byte {
	g := make([]byte, 64)
	g[0], g[9], g[10], g[11] = 0xff, 0x7f, 3, 0
	copy(g[12:], "NULL")
	body := append([]byte{5}, "READY"...)
	body = append(body, 11)
	body = append(body, "Socket-Type"...)
	body = append(body, 0, 0, 0, 3)
	body = append(body, "SUB"...)
	g = append(g, 0x04, byte(len(body)))
	g = append(g, body...)
	return append(g, 0x00, 0x01, 0x01)
}

// selfCPU is this process's CPU time: the in-process servers (zmq4, ours).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is another process's CPU time (the libzmq server), from /proc in clock ticks.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / 100) // USER_HZ is 100 on Linux
}

func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			v, _ := strconv.Atoi(strings.Fields(l)[1])
			return v
		}
	}
	return 0
}

func serveIdlePub() {
	pub, err := zmtp.ListenPub("127.0.0.1:0", zmtp.Options{Logger: quiet, MaxPeers: 100000})
	if err != nil {
		panic(err)
	}
	defer pub.Close()
	runtime.GC()
	fmt.Println(pub.Addr().String())
	in := bufio.NewReader(os.Stdin)
	_, _ = in.ReadString('\n')
	runtime.GC()
	fmt.Println("settled")
	_, _ = io.Copy(io.Discard, in)
}
