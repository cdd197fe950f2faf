// Package buildinfo says which build of the broker runs: its version and commit,
// the Go toolchain and quic-go it was built with, and the tunnel protocol version.
// `broker version` prints it and both roles export it as salt_broker_build_info.
//
// Version and Commit are set at link time by a release build:
//
//	go build -ldflags "-X github.com/salt-broker/salt-broker/internal/buildinfo.Version=1.2.0 \
//	  -X github.com/salt-broker/salt-broker/internal/buildinfo.Commit=$(git rev-parse HEAD)" ./cmd/broker
//
// Left empty, they are read from the module and VCS data Go embeds
// (runtime/debug.ReadBuildInfo), so a `go install` build still says what it is.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/salt-broker/salt-broker/internal/wire"
)

// Set by -ldflags -X (see the package comment); empty: read from the build.
var (
	Version string
	Commit  string
)

const quicModule = "github.com/quic-go/quic-go"

// Info is what one build is.
type Info struct {
	Version   string `json:"version"`    // "devel" when nothing says better
	Commit    string `json:"commit"`     // "unknown" when not recorded
	Modified  bool   `json:"modified"`   // built from a tree with uncommitted changes
	GoVersion string `json:"go_version"` // e.g. go1.26.8
	QUICGo    string `json:"quic_go"`    // the quic-go module version linked in
	Protocol  uint32 `json:"protocol"`   // wire.Version: an edge and a core must agree on it
}

var (
	once sync.Once
	info Info
)

// Get returns this binary's Info; it is computed once.
func Get() Info {
	once.Do(func() { info = read(Version, Commit, debug.ReadBuildInfo) })
	return info
}

// read builds the Info from the link-time values and the embedded build data.
func read(version, commit string, readBuild func() (*debug.BuildInfo, bool)) Info {
	i := Info{Version: version, Commit: commit, GoVersion: runtime.Version(), QUICGo: "unknown", Protocol: wire.Version}
	if bi, ok := readBuild(); ok {
		if bi.GoVersion != "" {
			i.GoVersion = bi.GoVersion
		}
		// "(devel)" is what Go records for a build of the main module from its
		// own tree; it says nothing, so the link-time value or "devel" wins.
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		for _, d := range bi.Deps {
			if d.Path == quicModule {
				if d.Replace != nil && d.Replace.Version != "" {
					d = d.Replace
				}
				i.QUICGo = d.Version
			}
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if i.Commit == "" {
					i.Commit = s.Value
				}
			case "vcs.modified":
				i.Modified = s.Value == "true"
			}
		}
	}
	if i.Version == "" {
		i.Version = "devel"
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	return i
}

// Collector is salt_broker_build_info: always 1, the build in its labels, so a
// dashboard can show which versions run and an alert can join on them.
func Collector() prometheus.Collector {
	i := Get()
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "salt_broker_build_info",
		Help: "Always 1; labels: the broker's version and commit, the Go and quic-go versions it was built with, the tunnel protocol version.",
		ConstLabels: prometheus.Labels{"version": i.Version, "commit": i.Commit, "goversion": i.GoVersion, "quic_go": i.QUICGo,
			"protocol": strconv.FormatUint(uint64(i.Protocol), 10)}},
		func() float64 { return 1 })
}
