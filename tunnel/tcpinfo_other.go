//go:build !linux

package tunnel

import (
	"errors"
	"net"
)

// tcpInfo has no portable source outside Linux.
func tcpInfo(net.Conn) Stats { return Stats{} }

func setCongestion(int, string) error {
	return errors.New("TCP_CONGESTION is only set on Linux")
}

func congestionOf(net.Conn) (string, error) { return "", errors.New("not on Linux") }

func congestionHint(string) string { return "drop --tcp-congestion on this system" }
