package tunnel

import (
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcpInfo reads the kernel's view of a TCP connection (TCP_INFO): smoothed and
// minimum RTT, congestion window in bytes, segments sent and retransmitted — the
// figures a pool of connections is sized by, as QUIC's ConnectionStats are.
func tcpInfo(c net.Conn) Stats {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Stats{}
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return Stats{}
	}
	var info *unix.TCPInfo
	_ = rc.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if err != nil || info == nil {
		return Stats{}
	}
	return Stats{
		SmoothedRTT:      time.Duration(info.Rtt) * time.Microsecond,
		MinRTT:           time.Duration(info.Min_rtt) * time.Microsecond,
		CongestionWindow: uint64(info.Snd_cwnd) * uint64(info.Snd_mss),
		PacketsSent:      uint64(info.Segs_out),
		PacketsLost:      uint64(info.Total_retrans),
	}
}

// setCongestion asks for the congestion control name on one socket.
func setCongestion(fd int, name string) error {
	return unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, name)
}

// congestionOf reads a socket's congestion control (tests).
func congestionOf(c net.Conn) (string, error) {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return "", err
	}
	var name string
	cerr := rc.Control(func(fd uintptr) { name, err = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION) })
	if cerr != nil {
		return "", cerr
	}
	return strings.TrimRight(name, "\x00"), err
}

// congestionHint says what the kernel offers and how to allow more.
func congestionHint(name string) string {
	avail, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_available_congestion_control")
	allowed, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
	return fmt.Sprintf("load it (modprobe tcp_%s) and allow it (sysctl net.ipv4.tcp_allowed_congestion_control), or drop --tcp-congestion; available: %q, allowed without privilege: %q",
		name, strings.TrimSpace(string(avail)), strings.TrimSpace(string(allowed)))
}
