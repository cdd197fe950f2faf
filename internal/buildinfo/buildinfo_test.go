package buildinfo

import (
	"runtime/debug"
	"testing"

	"github.com/salt-broker/salt-broker/internal/wire"
)

func TestRead(t *testing.T) {
	build := func() (*debug.BuildInfo, bool) {
		return &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Version: "(devel)"},
			Deps:     []*debug.Module{{Path: "github.com/quic-go/quic-go", Version: "v0.65.0"}},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}}}, true
	}
	got := read("", "", build)
	want := Info{Version: "devel", Commit: "abc123", Modified: true, GoVersion: "go1.99.1", QUICGo: "v0.65.0", Protocol: wire.Version}
	if got != want {
		t.Errorf("from the build data: got %+v, want %+v", got, want)
	}
	// -ldflags -X wins over what the build recorded.
	if got := read("1.2.0", "def456", build); got.Version != "1.2.0" || got.Commit != "def456" {
		t.Errorf("with link-time values: got %+v", got)
	}
	// A module version (go install ...@v1.3.0) is used when no link-time one is set.
	tagged := func() (*debug.BuildInfo, bool) {
		return &debug.BuildInfo{Main: debug.Module{Version: "v1.3.0"}}, true
	}
	if got := read("", "", tagged); got.Version != "v1.3.0" || got.Commit != "unknown" || got.QUICGo != "unknown" {
		t.Errorf("from a tagged module: got %+v", got)
	}
	// No build data at all (a stripped binary): still answers.
	if got := read("", "", func() (*debug.BuildInfo, bool) { return nil, false }); got.Version != "devel" || got.GoVersion == "" {
		t.Errorf("without build data: got %+v", got)
	}
}

func TestGetIsThisBinary(t *testing.T) {
	i := Get()
	// The test binary links no quic-go (only what it imports is recorded), so the
	// quic_go value is checked on the real binary by test/e2e's build_info check.
	if i.Protocol != wire.Version || i.GoVersion == "" || i.Version == "" || i.Commit == "" {
		t.Errorf("Get() = %+v", i)
	}
}
