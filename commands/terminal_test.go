package commands_test

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// runOnTerminal runs the bst-cache binary on a pseudo-terminal of 100
// columns and returns what it drew.
func runOnTerminal(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testenv.BstCacheBinary(t), args...)
	cmd.Env = append(cmd.Environ(), "HOME="+t.TempDir(), "BST_CACHE_CONFIG=", "BST_CACHE_NO_PROGRESS=", "BST_CACHE_JSON=")
	term := testenv.RunOnTerminal(t, cmd, 100)
	return term.Wait(t, cmd, time.Minute)
}

// wide lists the lines (between carriage returns and newlines) wider than
// cols.
func wide(out string, cols int) []string {
	var over []string
	for _, line := range regexp.MustCompile("[\r\n]+").Split(out, -1) {
		if utf8.RuneCountInString(line) > cols {
			over = append(over, line)
		}
	}
	return over
}

// On a terminal, pull draws a bar in bytes, with the total once the trees
// are known, the rate, the time left and the refs done; it moves while a
// large file streams (capped at 4 MiB/s so that it takes two seconds);
// every line fits the terminal's 100 columns.
func TestProgressOnTerminal(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	src := t.TempDir()
	bst1Artifact(t, src, "proj/shown/key", 4, 64<<10, 8<<20)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), true))
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", src, "push", "proj/shown/key"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, stderr)
	}
	out, err := runOnTerminal(t, "--config", cfg, "--local", t.TempDir(), "--bwlimit", "4MiB/s", "pull", "proj/shown/key")
	if err != nil {
		t.Fatalf("pull on a terminal: %v\n%q", err, out)
	}
	// "pull 0/1 refs, 1s left  39% |███   | (3.3/8.3 MiB, 4.0 MiB/s) [1s]"
	bar := regexp.MustCompile(`pull 0/1 refs(, \d+s left)? +\d+% [^\r]*?\(([0-9.]+ ?[KM]?i?B?)/8\.3 MiB, [0-9.]+ [KM]iB/s\) \[\d+s\]`)
	seen := map[string]bool{}
	for _, m := range bar.FindAllStringSubmatch(out, -1) {
		seen[m[2]] = true
	}
	if len(seen) < 4 {
		t.Errorf("the bar showed %d distinct byte counts out of 8.3 MiB (%v); want it to move while the large file streams\n%q", len(seen), seen, out)
	}
	if !strings.Contains(out, "done  proj/shown/key") {
		t.Errorf("no result line on the terminal\n%q", out)
	}
	if over := wide(out, 100); len(over) > 0 {
		t.Errorf("lines wider than the terminal: %q", over)
	}
}

// which on a terminal of 100 columns, three caches and bst-length refs:
// one row per ref fits, the ref shortened in the middle, and the dead
// cache's error once below the table.
func TestWhichOnTerminal(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	empty := testenv.StartServe(t, testenv.ServeOptions{})
	dead := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
	ref := "freedesktop-sdk/components-gstreamer-plugins-good/" + strings.Repeat("9c", 32)
	src := t.TempDir()
	bst1Artifact(t, src, ref, 2, 1<<10, 1<<10)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("latest", srv.URL(), true)+cacheTOML("releases", empty.URL(), false)+cacheTOML("offline-mirror", dead, false))
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", src, "push", ref); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, stderr)
	}
	out, err := runOnTerminal(t, "--config", cfg, "which", ref)
	if err != nil {
		t.Fatalf("which on a terminal: %v\n%q", err, out)
	}
	// The table fits; the error below it is a message the terminal wraps.
	table, _, _ := strings.Cut(out, "offline-mirror: cache offline-mirror")
	if over := wide(table, 100); len(over) > 0 {
		t.Errorf("table lines wider than the terminal: %q", over)
	}
	if strings.Contains(out, ref) || !strings.Contains(out, "…") || strings.Count(out, dead) != 1 || !strings.Contains(out, "yes") {
		t.Errorf("want the ref shortened, a yes and the dead cache's error once:\n%s", out)
	}
}
