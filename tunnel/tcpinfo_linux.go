package tunnel

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcpInfo reads the kernel's smoothed RTT and retransmitted-segment count.
func tcpInfo(c net.Conn) (time.Duration, uint64) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, 0
	}
	var info *unix.TCPInfo
	_ = rc.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if err != nil || info == nil {
		return 0, 0
	}
	return time.Duration(info.Rtt) * time.Microsecond, uint64(info.Total_retrans)
}
