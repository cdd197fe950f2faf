//go:build !linux

package tunnel

import (
	"net"
	"time"
)

// tcpInfo has no portable source outside Linux.
func tcpInfo(net.Conn) (time.Duration, uint64) { return 0, 0 }
