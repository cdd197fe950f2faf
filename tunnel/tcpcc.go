package tunnel

import (
	"log/slog"
	"sync"
	"syscall"
)

// ccControl returns the net.Dialer Control hook that asks for congestion control
// name on each TCP socket before it connects, or nil when name is "". It fails
// softly: the connection goes on with the kernel's default, and once (per once)
// a line says what was refused and what to do. A lossy path is exactly where a
// loss-based default (cubic, reno) is slow and a model-based one (bbr) is not,
// but a kernel without the module, or a container not allowed it, must not cost
// the edge its link.
func ccControl(name string, log *slog.Logger, once *sync.Once) func(string, string, syscall.RawConn) error {
	if name == "" {
		return nil
	}
	return func(_, address string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = setCongestion(int(fd), name) }); cerr != nil {
			err = cerr
		}
		if err != nil {
			once.Do(func() {
				log.Warn("--tcp-congestion not applied; TCP connections use the kernel's default congestion control",
					"tcp_congestion", name, "core", address, "err", err, "hint", congestionHint(name))
			})
		}
		return nil
	}
}
