package wan

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Lab is the packet-level lab: two network namespaces, A (198.18.0.1) and B
// (198.18.0.2, RFC 2544's benchmarking range), joined only by a TUN device in each,
// whose IP packets this process forwards with the Profile applied — so TCP (direct
// ZeroMQ, the TLS fallback) and QUIC suffer the same losses. This kernel has no netem.
type Lab struct {
	Name       string
	NSA, NSB   string
	tunA, tunB *os.File

	imp    *impairment
	closed chan struct{}
	once   sync.Once
	wg     sync.WaitGroup

	// IP bytes delivered, per direction (0: A to B, 1: B to A): [dir][0] of packets
	// to or from tallyPort, [dir][1] of all others (Tally).
	tallyPort atomic.Uint32
	tally     [2][2]atomic.Uint64

	Counters
}

// Addresses of the two sides.
const (
	AddrA = "198.18.0.1"
	AddrB = "198.18.0.2"
)

const labPrefix = "sbl"

var labSeq atomic.Uint32

// NewLab creates the namespaces and devices and starts forwarding. Close removes
// everything; CleanupStale removes what a crashed run left behind.
func NewLab(p Profile) (*Lab, error) {
	CleanupStale()
	id := fmt.Sprintf("%s%d-%d", labPrefix, os.Getpid()%100000, labSeq.Add(1))
	l := &Lab{Name: id, NSA: id + "-a", NSB: id + "-b", closed: make(chan struct{})}
	l.imp = newImpairment(p, &l.Counters)
	fail := func(err error) (*Lab, error) {
		_ = l.Close()
		return nil, err
	}
	for _, ns := range []string{l.NSA, l.NSB} {
		if err := ip("netns", "add", ns); err != nil {
			return fail(err)
		}
	}
	var err error
	if l.tunA, err = l.tun(id+"a", l.NSA, AddrA, AddrB); err != nil {
		return fail(err)
	}
	if l.tunB, err = l.tun(id+"b", l.NSB, AddrB, AddrA); err != nil {
		return fail(err)
	}
	l.wg.Go(func() { l.imp.run(l.closed) })
	l.wg.Go(func() { l.forward(l.tunA, l.tunB, 0) })
	l.wg.Go(func() { l.forward(l.tunB, l.tunA, 1) })
	return l, nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// tun creates a TUN device in the root namespace, moves it into ns (the fd stays
// attached) and gives it a point-to-point address.
func (l *Lab) tun(dev, ns, local, peer string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var req [unix.IFNAMSIZ + 64]byte
	copy(req[:], dev)
	*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = unix.IFF_TUN | unix.IFF_NO_PI
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); e != 0 {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", dev, e)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), dev)
	defer func() {
		// New namespaces inherit the host's TCP congestion control (bbr here), which
		// shrugs off random loss; the baselines should suffer it as common TCP does.
		for _, cc := range []string{"cubic", "reno"} {
			if exec.Command("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_congestion_control="+cc).Run() == nil {
				return
			}
		}
	}()
	for _, args := range [][]string{
		{"link", "set", "dev", dev, "netns", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "addr", "add", local, "peer", peer, "dev", dev},
		// A long device queue: the default 500 packets drops bursts at the sender,
		// losses nobody configured and no counter shows.
		{"-n", ns, "link", "set", dev, "mtu", "1500", "txqueuelen", "10000", "up"},
	} {
		if err := ip(args...); err != nil {
			_ = f.Close()
			return nil, err
		}
	}
	return f, nil
}

// SetProfile changes the impairment from now on.
func (l *Lab) SetProfile(p Profile) { l.imp.setProfile(p) }

// SetDown starts or ends a blackout.
func (l *Lab) SetDown(down bool) { l.imp.down.Store(down) }

// BlockUDP drops UDP packets only, as a firewall that filters UDP does.
func (l *Lab) BlockUDP(on bool) { l.imp.noUDP.Store(on) }

// Wrap runs a command inside one side's namespace.
func (l *Lab) Wrap(ns string) func(*exec.Cmd) *exec.Cmd {
	return func(c *exec.Cmd) *exec.Cmd {
		w := exec.Command("ip", append([]string{"netns", "exec", ns, c.Path}, c.Args[1:]...)...)
		w.Env, w.Dir, w.Stdin, w.Stdout, w.Stderr = c.Env, c.Dir, c.Stdin, c.Stdout, c.Stderr
		return w
	}
}

// forward copies packets from one TUN to the other, direction dir. A jitter larger
// than the packet spacing reorders them, as it does on a real path.
func (l *Lab) forward(from, to *os.File, dir int) {
	write := func(b []byte) {
		l.count(dir, b)
		_, _ = to.Write(b)
	}
	buf := make([]byte, 65536)
	for {
		n, err := from.Read(buf)
		if err != nil {
			return
		}
		l.imp.send(dir, buf[:n], isUDP(buf[:n]), write)
	}
}

func isUDP(pkt []byte) bool {
	switch {
	case len(pkt) > 9 && pkt[0]>>4 == 4:
		return pkt[9] == unix.IPPROTO_UDP
	case len(pkt) > 6 && pkt[0]>>4 == 6:
		return pkt[6] == unix.IPPROTO_UDP // without extension headers, as here
	}
	return false
}

// Close stops forwarding and deletes the namespaces (and with them the devices).
func (l *Lab) Close() error {
	var errs []error
	l.once.Do(func() {
		close(l.closed)
		for _, f := range []*os.File{l.tunA, l.tunB} {
			if f != nil {
				_ = f.Close()
			}
		}
		l.wg.Wait()
		for _, ns := range []string{l.NSA, l.NSB} {
			if err := ip("netns", "delete", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
				errs = append(errs, err)
			}
		}
	})
	return errors.Join(errs...)
}

// CleanupStale deletes lab namespaces whose creating process is gone.
func CleanupStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], labPrefix) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(strings.TrimPrefix(f[0], labPrefix), "%d-", &pid); err != nil {
			continue
		}
		if pid == os.Getpid()%100000 {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // pid still alive (modulo wrap-around: at worst a stale lab survives one more run)
		}
		_ = ip("netns", "delete", f[0])
	}
}
