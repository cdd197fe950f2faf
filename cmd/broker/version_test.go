package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/salt-broker/salt-broker/internal/buildinfo"
	"github.com/salt-broker/salt-broker/internal/wire"
)

func TestVersionCommand(t *testing.T) {
	r := broker(t, nil, "version")
	checkWired(t, r)
	if r.code != 0 {
		t.Fatalf("broker version: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	// The test binary is built without -ldflags: the version falls back to
	// "devel", and quic-go's version comes from the embedded module data.
	i := buildinfo.Get()
	for _, want := range []string{
		"broker " + i.Version + "\n",
		"go:       " + runtime.Version() + "\n",
		"quic-go:  " + i.QUICGo + "\n",
		fmt.Sprintf("protocol: %d\n", wire.Version),
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("broker version lacks %q:\n%s", want, r.stdout)
		}
	}
	if i.QUICGo == "unknown" || !strings.HasPrefix(i.QUICGo, "v") {
		t.Errorf("quic-go version %q: want the module version linked in", i.QUICGo)
	}

	r = broker(t, nil, "version", "--json")
	if r.code != 0 {
		t.Fatalf("broker version --json: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	var got buildinfo.Info
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("broker version --json: %v\n%s", err, r.stdout)
	}
	if got != i {
		t.Errorf("broker version --json = %+v, want %+v", got, i)
	}

	r = broker(t, nil, "version", "extra")
	checkOneLine(t, r, exitUsage, "takes no arguments")
}

// checkWired fails with what to do when the app lacks the commands of version.go
// and completion.go (newApp's Commands list and EnableBashCompletion).
func checkWired(t *testing.T, r result) {
	t.Helper()
	if strings.Contains(r.stderr, "unknown command") {
		t.Fatalf("versionCommand() and completionCommand() are not in newApp's Commands (and EnableBashCompletion: true): %s", r.stderr)
	}
}
