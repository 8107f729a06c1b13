package commands_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/bst-cache/bst-cache/commands"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// Flags anywhere: global flags before or after the command and after the
// arguments, command flags after the arguments; "--" makes what follows
// arguments; an unknown flag names the command and the ones that take it;
// every global flag has an environment variable.
func TestFlagsAnywhere(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), false))
	local := t.TempDir()
	isJSON := func(s string) bool { var v any; return json.Unmarshal([]byte(s), &v) == nil }
	for _, args := range [][]string{
		{"--config", cfg, "--json", "caches", "--offline"},
		{"caches", "--offline", "--json", "--config", cfg},
		{"caches", "--config=" + cfg, "--offline", "--json"},
	} {
		stdout, stderr, code := runCLI(t, "", args...)
		if code != 0 || !isJSON(stdout) || !strings.Contains(stdout, `"serve"`) {
			t.Errorf("%v: exit %d, %q\n%s", args, code, stdout, stderr)
		}
	}
	for _, args := range [][]string{
		{"--config", cfg, "--local", local, "--json", "pull", "demo/none/1"},
		{"pull", "demo/none/1", "--json", "--config", cfg, "--local", local},
		{"pull", "--config", cfg, "demo/none/1", "--local", local, "--strict", "--json"},
	} {
		stdout, stderr, code := runCLI(t, "", args...)
		if code != 3 || !isJSON(stdout) || !strings.Contains(stdout, "demo/none/1") {
			t.Errorf("%v: exit %d, %q; want 3 with a JSON report\n%s", args, code, stdout, stderr)
		}
	}
	// After "--", "-odd/ref" is a ref (missing), not a flag.
	if stdout, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "--json", "pull", "--", "-odd/ref/1"); code != 3 || !strings.Contains(stdout, "-odd/ref/1") {
		t.Errorf("pull -- -odd/ref/1: exit %d\n%s%s", code, stdout, stderr)
	}
	if _, stderr, code := runCLI(t, "", "caches", "--dry-run"); code != 2 || !strings.Contains(stderr, "bst-cache caches has no flag --dry-run") || !strings.Contains(stderr, "pull") {
		t.Errorf("an unknown flag: exit %d\n%s", code, stderr)
	}
	t.Setenv("BST_CACHE_JSON", "true")
	t.Setenv("BST_CACHE_LOCAL", local)
	if stdout, stderr, code := runCLI(t, "", "--config", cfg, "pull", "demo/none/1"); code != 3 || !isJSON(stdout) {
		t.Errorf("BST_CACHE_JSON and BST_CACHE_LOCAL: exit %d, %q\n%s", code, stdout, stderr)
	}
	t.Setenv("BST_CACHE_JSON", "")
	out, _, _ := runCLI(t, "", "--help")
	for _, env := range []string{"BST_CACHE_CONFIG", "BST_CACHE_LOCAL", "BST_CACHE_FORMAT", "BST_CACHE_JSON", "BST_CACHE_QUIET", "BST_CACHE_VERBOSE", "BST_CACHE_JOBS", "BST_CACHE_BWLIMIT", "BST_CACHE_NO_PROGRESS"} {
		if !strings.Contains(out, env) {
			t.Errorf("--help does not list %s", env)
		}
	}
}

// Messages: a mistyped command gets a suggestion; version prints the
// version, the commit and the Go version.
func TestMessages(t *testing.T) {
	if _, stderr, code := runCLI(t, "", "pul"); code != 2 || !strings.Contains(stderr, "did you mean pull?") {
		t.Errorf("pul: exit %d\n%s", code, stderr)
	}
	cfg := writeConfig(t, cacheTOML("latest", "http://127.0.0.1:1", false)+cacheTOML("releases", "http://127.0.0.1:2", true))
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", t.TempDir(), "copy", "--from", "lates", "--to", "releases", "demo/a/1"); code != 2 ||
		!strings.Contains(stderr, `no cache named "lates": did you mean latest? (the caches: latest, releases)`) || strings.Count(stderr, "hint") > 1 {
		t.Errorf("a mistyped cache name: exit %d\n%s", code, stderr)
	}
	bad := writeConfig(t, "[[cache]]\nname = \"a\"\nurl = \"http://h:1\"\n[cache.connection]\nconnect-timeout = 10\n")
	if _, stderr, code := runCLI(t, "", "--config", bad, "config"); code != 2 || !strings.Contains(stderr, `:5: cache.connection.connect-timeout: want a duration like "10s", got 10`) {
		t.Errorf("a duration written as a number: exit %d\n%s", code, stderr)
	}
	for content, want := range map[string]string{
		"[[cache]]\nname = \"a\"\nurl = \"http://h:1\"\nbandwidth = \"fast\"\n": `:4: cache "a": bandwidth: want a rate like "10MiB/s" or "100Mbit", got "fast"`,
		"[[cache]]\nname = \"a\"\nurl = \"http://h:1\"\nbandwidth = 10\n":       `:4: cache.bandwidth: want a rate like "10MiB/s" or "100Mbit", got 10`,
	} {
		if _, stderr, code := runCLI(t, "", "--config", writeConfig(t, content), "config"); code != 2 || !strings.Contains(stderr, want) {
			t.Errorf("a bad bandwidth: exit %d\n%s\nwant %s", code, stderr, want)
		}
	}
	if _, stderr, code := runCLI(t, "", "--bwlimit", "fast", "--local", t.TempDir(), "ls"); code != 2 || !strings.Contains(stderr, "--bwlimit") {
		t.Errorf("a bad --bwlimit: exit %d\n%s", code, stderr)
	}
	srv := testenv.StartServe(t, testenv.ServeOptions{})
	one := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), false))
	if _, stderr, code := runCLI(t, "", "--config", one, "--local", t.TempDir(), "pull", "demo/a/1"); code != 3 || !strings.Contains(stderr, "1 ref is in no cache") {
		t.Errorf("one missing ref: exit %d\n%s", code, stderr)
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		if stdout, _, code := runCLI(t, "", args...); code != 0 || !strings.Contains(stdout, "bst-cache test, commit ") || !strings.Contains(stdout, ", go1.") {
			t.Errorf("%v: exit %d, %q", args, code, stdout)
		}
	}
}

// Shell completion and the manual page come from the same definitions as
// --help.
func TestCompletionAndMan(t *testing.T) {
	// The completion words come from os.Args: ask the binary.
	words, err := exec.Command(testenv.BstCacheBinary(t), "--generate-bash-completion").Output()
	if err != nil || !strings.Contains(string(words), "pull\n") || !strings.Contains(string(words), "checkout\n") {
		t.Errorf("--generate-bash-completion: %v\n%s", err, words)
	}
	for shell, want := range map[string]string{"bash": "complete -o default -F _bst_cache bst-cache", "zsh": "bashcompinit", "fish": "complete -c bst-cache"} {
		if out, _, code := runCLI(t, "", "completion", shell); code != 0 || !strings.Contains(out, want) {
			t.Errorf("completion %s: exit %d, no %q", shell, code, want)
		}
	}
	if out, _, code := runCLI(t, "", "man"); code != 0 || !strings.Contains(out, ".TH bst-cache 1") || !strings.Contains(out, "copy") {
		t.Errorf("man: exit %d\n%.200s", code, out)
	}
}

// Globs in pull, which and copy match refs in the local store and in the
// caches that can list (serve); one matching nothing is a usage error.
func TestGlobs(t *testing.T) {
	a := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	b := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, a)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("a", a.URL(), false)+cacheTOML("b", b.URL(), true))
	local := t.TempDir()
	rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "pull", "demo/*")
	if code != 0 || len(rep.Refs) != len(refs) {
		t.Errorf("pull 'demo/*': exit %d, %+v\n%s", code, rep.Refs, stderr)
	}
	stdout, _, code := runCLI(t, "", "--config", cfg, "which", "demo/w*")
	if code != 0 || strings.Count(stdout, "demo/world/") != 1 || strings.Contains(stdout, "demo/hello/") {
		t.Errorf("which 'demo/w*': exit %d\n%s", code, stdout)
	}
	rep, stderr, code = runJSON(t, "--config", cfg, "--local", t.TempDir(), "copy", "--from", "a", "--to", "b", "demo/h*")
	if code != 0 || statuses(rep) != "done@b" {
		t.Errorf("copy 'demo/h*': exit %d, %s\n%s", code, statuses(rep), stderr)
	}
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "pull", "nothing/*"); code != 2 || !strings.Contains(stderr, "matches no ref") {
		t.Errorf("a glob matching nothing: exit %d\n%s", code, stderr)
	}
}

// Messages say what happened, in plain counts: where a missing ref was
// looked for (not the exit code's sentinel again), no zero counts in an
// error, "interrupted" rather than Go's "context canceled", "1 ref".
func TestMessageWording(t *testing.T) {
	local := t.TempDir()
	ref := "demo/a/" + strings.Repeat("1", 64)
	bst1Artifact(t, local, ref, 1, 10, 10)
	srv := testenv.StartServe(t, testenv.ServeOptions{})
	target := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), false)+cacheTOML("target", target.URL(), true))
	dead := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("dead", "http://127.0.0.1:"+strconv.Itoa(testenv.FreePort(t)), false))
	for _, tc := range []struct {
		args []string
		code int
		want string
		not  []string
	}{
		{[]string{"--config", cfg, "--local", local, "rm", "demo/none/1"}, 3, "rm: 1 ref is not in the local store\n", []string{"every cache", "0 done", "0 failed"}},
		{[]string{"--config", cfg, "--local", local, "pull", "demo/none/1"}, 3, "pull: 1 ref is in no cache\n", []string{"every cache", "0 failed"}},
		{[]string{"--config", cfg, "--local", local, "copy", "--from", "serve", "--to", "target", "demo/none/1"}, 3, "copy: 1 ref is in none of the caches copied from\n", []string{"every cache"}},
		{[]string{"--config", dead, "--local", local, "pull", "demo/none/1"}, 1, "pull: 1 ref failed\n", []string{"conflict", "0 missing"}},
	} {
		_, stderr, code := runCLI(t, "", tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, want %d with %q:\n%s", tc.args, code, tc.code, tc.want, stderr)
		}
		for _, not := range tc.not {
			if strings.Contains(stderr, not) {
				t.Errorf("%v says %q:\n%s", tc.args, not, stderr)
			}
		}
	}
	for args, want := range map[string]string{
		"pull --dryrun x": "bst-cache pull has no flag --dryrun: did you mean --dry-run?",
		"ls --jsn":        "bst-cache ls has no flag --jsn: did you mean --json?",
		"pull --cache x":  "bst-cache pull has no flag --cache (ls, push, which take it)",
	} {
		if _, stderr, code := runCLI(t, "", strings.Fields(args)...); code != 2 || !strings.Contains(stderr, want) {
			t.Errorf("%s: exit %d, want 2 with %q:\n%s", args, code, want, stderr)
		}
	}
	if stdout, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "rm", ref); code != 0 || !strings.Contains(stdout, "with 1 ref\n") {
		t.Errorf("rm: exit %d, want \"with 1 ref\":\n%s%s", code, stdout, stderr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stdout, stderr bytes.Buffer
	t.Setenv("HOME", t.TempDir())
	code := commands.Main(ctx, "test", []string{"bst-cache", "--config", cfg, "--local", t.TempDir(), "pull", "demo/none/1"}, &stdout, &stderr)
	if code != 130 || !strings.Contains(stderr.String(), "interrupted") || strings.Contains(stderr.String(), "canceled") {
		t.Errorf("a cancelled pull: exit %d, want 130 saying interrupted, not canceled:\n%s", code, stderr.String())
	}
}
