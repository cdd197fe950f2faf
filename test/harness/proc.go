package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	maxEvents     = 10000     // unconsumed events kept per process; older ones are dropped and counted
	maxLineBytes  = 64 << 20  // one stdout JSON line (stats of many minions)
	stderrKeep    = 8 << 20   // stderr bytes kept for Stderr (a debug-level broker logs every request)
	stderrDump    = 256 << 10 // of which the failure dump shows the tail
	maxPlainLines = 200       // non-JSON stdout lines kept for the failure dump
	sendTimeout   = 5 * time.Second
	reapTimeout   = 10 * time.Second
)

// Proc is a started peer process. It runs in its own process group so that a
// kill reaches everything it started (e.g. behind `ip netns exec`); stdout is
// parsed as JSON lines into events; stderr is kept for the failure dump.
type Proc struct {
	Name string

	t     testing.TB
	cmd   *exec.Cmd
	stdin *os.File

	sendMu sync.Mutex

	mu        sync.Mutex
	events    []map[string]any
	dropped   int
	changed   chan struct{} // closed and replaced whenever events or done change
	plain     []string
	stderr    []byte
	readErr   error
	exitErr   error
	killed    bool
	stdinDone bool

	done chan struct{}
}

// Start starts cmd as a peer named name and registers its cleanup with t: the
// process group is killed, its goroutines are reaped, and on failure its
// stderr and unread events are logged.
func Start(t testing.TB, name string, cmd *exec.Cmd) *Proc {
	t.Helper()
	p, err := start(t, name, cmd)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return p
}

func start(t testing.TB, name string, cmd *exec.Cmd) (*Proc, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	// If the test binary dies without cleanup, the peer must not outlive it.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL

	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stdin pipe: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		closeAll(inR, inW)
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		closeAll(inR, inW, outR, outW)
		return nil, fmt.Errorf("stderr pipe: %w", err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	if err := cmd.Start(); err != nil {
		closeAll(inR, inW, outR, outW, errR, errW)
		return nil, fmt.Errorf("exec %s: %w", cmd.Path, err)
	}
	// The child holds its own copies; ours would keep EOF from ever arriving.
	closeAll(inR, outW, errW)

	p := &Proc{
		Name:    name,
		t:       t,
		cmd:     cmd,
		stdin:   inW,
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); p.readStdout(outR) }()
	go func() { defer readers.Done(); p.readStderr(errR) }()
	go func() {
		werr := cmd.Wait()
		readers.Wait()
		p.mu.Lock()
		p.exitErr = werr
		p.mu.Unlock()
		_ = inW.Close()
		close(p.done)
		p.wake()
	}()
	t.Cleanup(func() { p.cleanup() })
	return p, nil
}

func closeAll(fs ...*os.File) {
	for _, f := range fs {
		_ = f.Close()
	}
}

func (p *Proc) cleanup() {
	p.Kill()
	select {
	case <-p.done:
	case <-time.After(reapTimeout):
		p.t.Errorf("%s: not reaped %v after SIGKILL", p.Name, reapTimeout)
	}
	if p.t.Failed() {
		p.t.Logf("---- %s (pid %d) ----\n%s", p.Name, p.Pid(), p.Dump())
		p.saveStderr()
	}
}

// saveStderr writes everything kept of the process's stderr to a file in
// $HARNESS_FAIL_LOGS, when set: the failure dump shows only its tail, and a flaky
// failure is usually explained by what happened long before the end.
func (p *Proc) saveStderr() {
	dir := os.Getenv("HARNESS_FAIL_LOGS")
	if dir == "" {
		return
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(p.t.Name())
	path := filepath.Join(dir, fmt.Sprintf("%s-%s-%d.log", name, p.Name, p.Pid()))
	if err := os.MkdirAll(dir, 0o755); err == nil {
		err = os.WriteFile(path, []byte(p.Stderr()), 0o644)
		if err == nil {
			p.t.Logf("%s: full stderr kept in %s", p.Name, path)
			return
		}
	}
	p.t.Logf("%s: could not keep stderr in %s", p.Name, dir)
}

func (p *Proc) readStdout(r *os.File) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLineBytes)
	for sc.Scan() {
		line := sc.Bytes()
		var ev map[string]any
		if len(line) > 0 && line[0] == '{' && json.Unmarshal(line, &ev) == nil {
			if _, ok := ev["event"].(string); ok {
				p.addEvent(ev)
				continue
			}
		}
		p.mu.Lock()
		p.plain = append(p.plain, string(line))
		if len(p.plain) > maxPlainLines {
			p.plain = p.plain[len(p.plain)-maxPlainLines:]
		}
		p.mu.Unlock()
	}
	if err := sc.Err(); err != nil {
		p.mu.Lock()
		p.readErr = fmt.Errorf("read stdout of %s: %w", p.Name, err)
		p.mu.Unlock()
		// Keep draining so the child never blocks on a full pipe.
		_, _ = io.Copy(io.Discard, r)
	}
}

func (p *Proc) readStderr(r *os.File) {
	defer r.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			p.mu.Lock()
			p.stderr = append(p.stderr, buf[:n]...)
			if len(p.stderr) > stderrKeep {
				p.stderr = append([]byte(nil), p.stderr[len(p.stderr)-stderrKeep/2:]...)
			}
			p.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

func (p *Proc) addEvent(ev map[string]any) {
	p.mu.Lock()
	p.events = append(p.events, ev)
	if len(p.events) > maxEvents {
		p.dropped += len(p.events) - maxEvents
		p.events = append([]map[string]any(nil), p.events[len(p.events)-maxEvents:]...)
	}
	p.mu.Unlock()
	p.wake()
}

func (p *Proc) wake() {
	p.mu.Lock()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// Pid is the peer's process id (also its process group id).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited and its output is fully read.
func (p *Proc) Done() <-chan struct{} { return p.done }

// ExitErr is the process's exit status once Done is closed (nil for exit 0).
func (p *Proc) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// Send writes v as one JSON line to the peer's stdin.
func (p *Proc) Send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode command for %s: %w", p.Name, err)
	}
	b = append(b, '\n')
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	if p.stdinDone {
		return fmt.Errorf("send to %s: stdin closed", p.Name)
	}
	if err := p.stdin.SetWriteDeadline(time.Now().Add(sendTimeout)); err != nil {
		return fmt.Errorf("send to %s: %w", p.Name, err)
	}
	if _, err := p.stdin.Write(b); err != nil {
		return fmt.Errorf("send to %s: %w", p.Name, err)
	}
	return nil
}

// WaitEvent returns (and consumes) the oldest unread event named event,
// waiting for it until ctx ends or the process exits.
func (p *Proc) WaitEvent(ctx context.Context, event string) (map[string]any, error) {
	return p.WaitMatch(ctx, event, nil)
}

// WaitMatch is WaitEvent restricted to events for which match returns true.
// An empty event name matches every event.
func (p *Proc) WaitMatch(ctx context.Context, event string, match func(map[string]any) bool) (map[string]any, error) {
	for {
		p.mu.Lock()
		for i, ev := range p.events {
			if (event == "" || ev["event"] == event) && (match == nil || match(ev)) {
				p.events = append(p.events[:i:i], p.events[i+1:]...)
				p.mu.Unlock()
				return ev, nil
			}
		}
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-p.done:
			// Events parsed before exit were already scanned above unless they
			// arrived in the same instant: scan once more, then report the exit.
			if ev, ok := p.takeNow(event, match); ok {
				return ev, nil
			}
			return nil, fmt.Errorf("%s exited (%v) before event %q; stderr: %s", p.Name, p.ExitErr(), event, p.stderrTail(2000))
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for %s event %q: %w", p.Name, event, context.Cause(ctx))
		case <-changed:
		}
	}
}

func (p *Proc) takeNow(event string, match func(map[string]any) bool) (map[string]any, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, ev := range p.events {
		if (event == "" || ev["event"] == event) && (match == nil || match(ev)) {
			p.events = append(p.events[:i:i], p.events[i+1:]...)
			return ev, true
		}
	}
	return nil, false
}

// Call sends cmd with a fresh "tag" and waits for the event named reply that
// echoes that tag, so concurrent commands never take each other's answers.
func (p *Proc) Call(ctx context.Context, cmd map[string]any, reply string) (map[string]any, error) {
	tag := nextTag()
	cmd["tag"] = tag
	if err := p.Send(cmd); err != nil {
		return nil, err
	}
	return p.WaitMatch(ctx, reply, func(ev map[string]any) bool { return ev["tag"] == tag })
}

// Signal sends sig to the peer's whole process group (SIGSTOP/SIGCONT pause
// and resume a peer in fault tests).
func (p *Proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return fmt.Errorf("signal %s: already exited", p.Name)
	default:
	}
	if err := syscall.Kill(-p.Pid(), sig); err != nil {
		return fmt.Errorf("signal %v to %s: %w", sig, p.Name, err)
	}
	return nil
}

// Stop asks the peer to quit, closes its stdin, and kills the group if it has
// not exited within timeout. It returns the exit error (nil for a clean exit).
func (p *Proc) Stop(timeout time.Duration) error {
	_ = p.Send(map[string]any{"cmd": "quit"})
	p.closeStdin()
	select {
	case <-p.done:
		return p.ExitErr()
	case <-time.After(timeout):
	}
	p.Kill()
	select {
	case <-p.done:
	case <-time.After(reapTimeout):
		return fmt.Errorf("stop %s: not reaped after SIGKILL", p.Name)
	}
	return fmt.Errorf("stop %s: killed after %v without exiting (%v)", p.Name, timeout, p.ExitErr())
}

func (p *Proc) closeStdin() {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	if !p.stdinDone {
		p.stdinDone = true
		_ = p.stdin.Close()
	}
}

// Kill sends SIGKILL to the peer's process group; it does not wait.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.mu.Lock()
	p.killed = true
	p.mu.Unlock()
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
}

// Stderr returns the kept tail of the peer's stderr.
func (p *Proc) Stderr() string { return p.stderrTail(stderrKeep) }

func (p *Proc) stderrTail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.stderr
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Dump renders what the peer left behind: exit status, unread events,
// stray stdout lines and the stderr tail.
func (p *Proc) Dump() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b bytes.Buffer
	fmt.Fprintf(&b, "cmd: %s\n", strings.Join(p.cmd.Args, " "))
	fmt.Fprintf(&b, "exit: %v killed=%v dropped-events=%d read-err=%v\n", p.exitErr, p.killed, p.dropped, p.readErr)
	evs := p.events
	if len(evs) > 20 {
		fmt.Fprintf(&b, "(%d older unread events not shown)\n", len(evs)-20)
		evs = evs[len(evs)-20:]
	}
	for _, ev := range evs {
		j, _ := json.Marshal(ev)
		if len(j) > 2000 {
			j = append(j[:2000], "..."...)
		}
		fmt.Fprintf(&b, "unread event: %s\n", j)
	}
	for _, l := range p.plain {
		fmt.Fprintf(&b, "stdout: %s\n", l)
	}
	tail := p.stderr
	if len(tail) > stderrDump {
		tail = tail[len(tail)-stderrDump:]
	}
	fmt.Fprintf(&b, "stderr (last %d KiB at most):\n%s", stderrDump>>10, tail)
	return b.String()
}
