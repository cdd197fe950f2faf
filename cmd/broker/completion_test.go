package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// complete runs the script `broker completion bash` prints in a real bash, as
// bash does on Tab with the command line words (the last one being typed), and
// returns the suggestions. "broker" on PATH is this test binary running main().
func complete(t *testing.T, words ...string) []string {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash is needed to test its completion script: %v", err)
	}
	dir := t.TempDir()
	if err := os.Symlink(os.Args[0], filepath.Join(dir, "broker")); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "broker.bash")
	r := broker(t, nil, "completion", "bash")
	checkWired(t, r)
	if r.code != 0 {
		t.Fatalf("broker completion bash: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if err := os.WriteFile(script, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	// COMP_WORDS and COMP_CWORD are what bash sets before calling the function.
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = "'" + w + "'"
	}
	prog := `source "$1"; COMP_WORDS=(` + strings.Join(quoted, " ") + `); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); ` +
		`_broker; printf '%s\n' "${COMPREPLY[@]}"`
	ctx, cancel := context.WithTimeout(context.Background(), exitBound)
	defer cancel()
	cmd := exec.CommandContext(ctx, bash, "--norc", "--noprofile", "-c", prog, "bash", script)
	cmd.Env = append(os.Environ(), runMainEnv+"=1", "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("complete %q: %v\n%s", words, err, out)
	}
	return strings.Fields(string(out))
}

func TestBashCompletion(t *testing.T) {
	for _, tc := range []struct {
		words []string
		want  []string // all of these among the suggestions
		not   []string // none of these
	}{
		{words: []string{"broker", ""}, want: []string{"edge", "core", "certs", "status", "version", "completion"}},
		{words: []string{"broker", "ve"}, want: []string{"version"}, not: []string{"edge"}},
		{words: []string{"broker", "certs", ""}, want: []string{"init", "issue"}},
		{words: []string{"broker", "completion", ""}, want: []string{"bash", "zsh"}},
		{words: []string{"broker", "edge", "--co"}, want: []string{"--config", "--core"}, not: []string{"--master"}},
		{words: []string{"broker", "core", "--mas"}, want: []string{"--master"}, not: []string{"--core"}},
	} {
		got := complete(t, tc.words...)
		for _, w := range tc.want {
			if !slices.Contains(got, w) {
				t.Errorf("complete %q = %q: lacks %q", tc.words, got, w)
			}
		}
		for _, w := range tc.not {
			if slices.Contains(got, w) {
				t.Errorf("complete %q = %q: has %q", tc.words, got, w)
			}
		}
	}
}

func TestZshCompletionScript(t *testing.T) {
	r := broker(t, nil, "completion", "zsh")
	checkWired(t, r)
	if r.code != 0 {
		t.Fatalf("broker completion zsh: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	// compinit loads a file from $fpath as a completion only if its first line
	// is the #compdef tag.
	if !strings.HasPrefix(r.stdout, "#compdef broker\n") {
		t.Errorf("zsh script does not start with #compdef broker:\n%s", r.stdout)
	}
	zsh, err := exec.LookPath("zsh")
	if err != nil {
		t.Logf("zsh not installed: its script is checked only for its #compdef line")
		return
	}
	// zsh -n parses without running: a syntax error fails here.
	cmd := exec.Command(zsh, "-n")
	cmd.Stdin = strings.NewReader(r.stdout)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("zsh -n: %v\n%s", err, out)
	}
}
