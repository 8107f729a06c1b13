package commands_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/commands"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// countingListener counts the connections made to it (and closes them):
// a cache URL that tells whether anything dialled it.
func countingListener(t *testing.T) (url string, accepts *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepts = &atomic.Int64{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			c.Close()
		}
	}()
	return "http://" + l.Addr().String(), accepts
}

// completionSetup is a bst1 store holding one artifact and a configuration
// naming a cache that counts connections.
func completionSetup(t *testing.T) (store, cfg, ref string, accepts *atomic.Int64) {
	t.Helper()
	store, ref = t.TempDir(), "demo/hello/"+strings.Repeat("a", 64)
	bst1Artifact(t, store, ref, 3, 100, 1000)
	url, accepts := countingListener(t)
	cfg = writeConfig(t, "format = \"bst1\"\n"+cacheTOML("latest", url, true)+cacheTOML("releases", url, true))
	return store, cfg, ref, accepts
}

// runIn runs the bst-cache binary in dir with an empty home and a time
// limit (a command that did run could serve or wait forever).
func runIn(t *testing.T, dir string, env []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.BstCacheBinary(t), args...)
	home := t.TempDir()
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), append([]string{"HOME=" + home, "XDG_CONFIG_HOME=" + home, "XDG_CACHE_HOME=" + home, "BST_CACHE_CONFIG=", "BST_CACHE_LOCAL="}, env...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// Completing any command, with arguments typed, runs nothing: through the
// completion entry point and through urfave/cli's old flag wherever it
// stands, the store stays byte-identical, no cache is dialled and no file
// is created (rm used to remove the artifact, checkout to create a
// directory named --generate-bash-completion, pull to pull).
func TestCompletionRunsNothing(t *testing.T) {
	store, cfg, ref, accepts := completionSetup(t)
	before := testenv.TreeSnapshot(t, store)
	app := commands.NewApp("test", nil, nil)
	for _, cmd := range app.Commands {
		typed := []string{cmd.Name, ref, "out"}
		global := []string{"--config", cfg, "--local", store}
		for _, args := range [][]string{
			append(append(append([]string{}, global...), typed...), "--generate-bash-completion"),
			append(append([]string{}, typed...), append(global, "--generate-bash-completion")...),
			append(append(append([]string{}, global...), cmd.Name, "--generate-bash-completion"), ref, "out"),
			append(append(append([]string{"__complete"}, global...), typed...), ""),
			append(append(append([]string{"__complete"}, global...), typed...), "--"),
			append(append(append([]string{"__complete"}, global...), cmd.Name, "--to"), ""),
		} {
			work := t.TempDir()
			stdout, stderr, err := runIn(t, work, nil, args...)
			if err != nil || stderr != "" {
				t.Errorf("%v: %v\n%s%s", args, err, stdout, stderr)
			}
			if diff := cmp.Diff(before, testenv.TreeSnapshot(t, store)); diff != "" {
				t.Fatalf("%v changed the store (-before +after):\n%s", args, diff)
			}
			if left := testenv.TreeSnapshot(t, work); len(left) != 1 {
				t.Errorf("%v created files: %v", args, left)
			}
			if n := accepts.Load(); n != 0 {
				t.Fatalf("%v dialled the cache %d times", args, n)
			}
		}
	}
}

// The completion scripts call the entry point: bash's function run under
// bash with COMP_WORDS set completes commands, flags and cache names and
// leaves the store as it was; zsh's and fish's scripts call it too.
func TestCompletionScripts(t *testing.T) {
	store, cfg, ref, accepts := completionSetup(t)
	before := testenv.TreeSnapshot(t, store)
	scripts := map[string]string{}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		out, stderr, code := runCLI(t, "", "completion", shell)
		if code != 0 || !strings.Contains(out, "__complete") {
			t.Errorf("completion %s: exit %d, does not call __complete:\n%s%s", shell, code, out, stderr)
		}
		scripts[shell] = out
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		testenv.Missing(t, "bash: %v", err)
	}
	script := filepath.Join(t.TempDir(), "completion.bash")
	if err := os.WriteFile(script, []byte(scripts["bash"]), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := testenv.BstCacheBinary(t)
	for _, tc := range []struct {
		words []string
		want  string
	}{
		{[]string{"pu"}, "pull\npush\n"},
		{[]string{"rm", ref, ""}, ""},
		{[]string{"checkout", ref, ""}, ""},
		{[]string{"pull", "x", ""}, ""},
		{[]string{"rm", ref, "--dr"}, "--dry-run\n"},
		{[]string{"copy", ref, "--to", "rel"}, "releases\n"},
		{[]string{"completion", "f"}, "fish\n"},
	} {
		work := t.TempDir()
		words := append([]string{bin}, tc.words...)
		var quoted []string
		for _, w := range words {
			quoted = append(quoted, "'"+w+"'")
		}
		prog := ". " + script + "\nCOMP_WORDS=(" + strings.Join(quoted, " ") + ")\nCOMP_CWORD=" + strconv.Itoa(len(words)-1) +
			"\n_bst_cache\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
		cmd := exec.Command(bash, "--norc", "-c", prog)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "BST_CACHE_CONFIG="+cfg, "BST_CACHE_LOCAL="+store, "HOME="+work)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if got := strings.TrimPrefix(string(out), "\n"); err != nil || got != tc.want {
			t.Errorf("bash completion of %q: %v, %q; want %q\n%s", tc.words, err, got, tc.want, stderr.String())
		}
		if diff := cmp.Diff(before, testenv.TreeSnapshot(t, store)); diff != "" {
			t.Fatalf("completing %q changed the store (-before +after):\n%s", tc.words, diff)
		}
		if left := testenv.TreeSnapshot(t, work); len(left) != 1 {
			t.Errorf("completing %q created files: %v", tc.words, left)
		}
	}
	if n := accepts.Load(); n != 0 {
		t.Errorf("completion dialled the cache %d times", n)
	}
}
