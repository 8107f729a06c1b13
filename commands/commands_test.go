package commands_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/commands"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// runCLI runs bst-cache in-process with an empty home, so no user or
// project file is read unless the test writes one.
func runCLI(t *testing.T, dir string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	home := t.TempDir()
	return runWith(t, dir, map[string]string{"HOME": home, "XDG_CONFIG_HOME": filepath.Join(home, ".config"), "XDG_CACHE_HOME": filepath.Join(home, ".cache")}, args...)
}

// runWith runs bst-cache in-process in dir (the working directory when
// empty) with env set and no BST_CACHE_CONFIG.
func runWith(t *testing.T, dir string, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	t.Setenv("BST_CACHE_CONFIG", "")
	if dir != "" {
		wd, _ := os.Getwd()
		if err := os.Chdir(dir); err != nil {
			t.Fatal(err)
		}
		defer os.Chdir(wd)
	}
	var out, errOut bytes.Buffer
	code = commands.Main(context.Background(), "test", append([]string{"bst-cache"}, args...), &out, &errOut)
	return out.String(), errOut.String(), code
}

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bst-cache.toml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

type cacheRow struct {
	Name         string         `json:"name"`
	URL          string         `json:"url"`
	Origin       string         `json:"origin"`
	Status       string         `json:"status"`
	Error        string         `json:"error"`
	Capabilities map[string]any `json:"capabilities"`
}

func TestCachesAgainstLiveServers(t *testing.T) {
	bst1 := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
	bazel := testenv.StartBazelRemote(t)
	dead := "http://127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	cfg := writeConfig(t, fmt.Sprintf(`format = "bst1"

[[cache]]
name = "bst1"
url = %q
push = true

[[cache]]
name = "bazel"
url = %q
type = "storage"

[[cache]]
name = "dead"
url = %q
`, bst1.URL(), "grpc://"+bazel.Addr, dead))

	start := time.Now()
	out, errOut, code := runCLI(t, "", "--config", cfg, "--json", "caches")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("caches took %v with one dead cache", elapsed)
	}
	var rows []cacheRow
	if err := decodeDoc(out, &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rows) != 3 || rows[0].Name != "bst1" || rows[1].Name != "bazel" || rows[2].Name != "dead" {
		t.Fatalf("rows out of priority order: %+v", rows)
	}
	if rows[0].Origin != cfg+":3" || rows[2].Origin != cfg+":13" {
		t.Errorf("origins %q, %q", rows[0].Origin, rows[2].Origin)
	}
	want := map[string]map[string]any{
		"bst1":  {"cas": true, "reference_storage": true, "remote_asset_fetch": false, "remote_asset_push": false, "get_tree": false, "push_allowed": "yes", "max_batch_bytes": float64(1 << 20)},
		"bazel": {"cas": true, "get_tree": true, "reference_storage": false, "remote_asset_push": false},
	}
	for _, r := range rows[:2] {
		if r.Status != "ok" {
			t.Errorf("%s: status %s (%s)", r.Name, r.Status, r.Error)
		}
		for k, v := range want[r.Name] {
			if r.Capabilities[k] != v {
				t.Errorf("%s: capability %s = %v; want %v", r.Name, k, r.Capabilities[k], v)
			}
		}
	}
	if rows[2].Status != "unreachable" || !strings.Contains(rows[2].Error, dead) {
		t.Errorf("dead: status %s, error %q; want unreachable naming %s", rows[2].Status, rows[2].Error, dead)
	}

	// The table has the same facts, one row per cache in order.
	out, _, code = runCLI(t, "", "--config", cfg, "caches")
	lines := strings.Split(out, "\n")
	if code != 0 || !strings.HasPrefix(lines[0], "NAME") || !strings.HasPrefix(lines[1], "bst1 ") || !strings.Contains(lines[3], "unreachable") {
		t.Errorf("table:\n%s", out)
	}
	if _, _, code := runCLI(t, "", "--config", cfg, "caches", "--check"); code != 1 {
		t.Errorf("caches --check with a dead cache: exit %d; want 1", code)
	}

	out, _, code = runCLI(t, "", "--config", cfg, "--json", "caches", "--offline")
	rows = nil
	if err := decodeDoc(out, &rows); err != nil || code != 0 {
		t.Fatalf("offline: %v, exit %d", err, code)
	}
	for _, r := range rows {
		if r.Status != "unchecked" || r.Capabilities != nil {
			t.Errorf("offline %s: %+v", r.Name, r)
		}
	}
}

func TestConfigErrorsExitTwo(t *testing.T) {
	cfg := writeConfig(t, "[[cache]]\nname = \"a\"\nurl = \"ftp://h:1\"\n")
	_, errOut, code := runCLI(t, "", "--config", cfg, "caches")
	if code != commands.ExitUsage || !strings.Contains(errOut, cfg+":3: cache \"a\": url: unknown scheme") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	// The project file is found from a subdirectory.
	proj := filepath.Dir(cfg)
	sub := filepath.Join(proj, "a", "b")
	os.MkdirAll(sub, 0o755)
	_, errOut, code = runCLI(t, sub, "caches", "--offline")
	if code != commands.ExitUsage || !strings.Contains(errOut, cfg+":3:") {
		t.Errorf("project file: exit %d, stderr %q", code, errOut)
	}
	for _, args := range [][]string{{"nope"}, {"--bogus", "caches"}, {"--format", "bst9", "ls"}, {"--jobs", "0", "ls"}, {"ls", "a", "b"}} {
		if _, errOut, code := runCLI(t, t.TempDir(), args...); code != commands.ExitUsage {
			t.Errorf("%v: exit %d; want 2 (%s)", args, code, errOut)
		}
	}
}

func TestConfigCommand(t *testing.T) {
	dir := t.TempDir()
	const secret = "tok-0123456789"
	os.WriteFile(filepath.Join(dir, "token"), []byte(secret), 0o600)
	cfg := filepath.Join(dir, "c.toml")
	os.WriteFile(cfg, []byte("[[cache]]\nname = \"a\"\nurl = \"http://h:1\"\n[cache.auth]\naccess-token = \"token\"\n"), 0o644)
	for _, args := range [][]string{{"config"}, {"--json", "config"}} {
		out, errOut, code := runCLI(t, "", append([]string{"--config", cfg}, args...)...)
		if code != 0 || strings.Contains(out+errOut, secret) || !strings.Contains(out, "***") || !strings.Contains(out, cfg+":1") {
			t.Errorf("%v: exit %d, output:\n%s%s", args, code, out, errOut)
		}
	}
}

func TestLsListsBstRefs(t *testing.T) {
	bst := testenv.NewBst(t)
	p := testenv.WriteProject(t, "demo")
	bst.Run(t, p.Dir, append([]string{"build"}, p.Elements...)...)

	want := testenv.RefsOnDisk(t, bst.ArtifactDir())

	out, errOut, code := runCLI(t, "", "--format", "bst1", "--local", bst.ArtifactDir(), "ls")
	if code != 0 || strings.Join(want, "\n")+"\n" != out {
		t.Errorf("ls: exit %d, %q; want the refs alone, one per line\n%s", code, out, errOut)
	}
	if out, _, _ := runCLI(t, "", "--local", bst.ArtifactDir(), "ls", "demo/hello"); !strings.HasPrefix(out, "demo/hello/") || strings.Count(out, "\n") != 1 {
		t.Errorf("ls demo/hello (a prefix): %q", out)
	}
	out, errOut, code = runCLI(t, "", "--format", "bst1", "--local", bst.ArtifactDir(), "ls", "-l")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		got = append(got, f[0])
		if len(f) < 2 || !strings.Contains(f[1], "/") {
			t.Errorf("line %q: want the ref then its digest", line)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ls (-bst's refs +got):\n%s", diff)
	}

	out, _, code = runCLI(t, "", "--format", "bst1", "--local", bst.ArtifactDir(), "--json", "ls", "demo/hello/*")
	var entries []struct{ Ref, Digest string }
	if err := decodeDoc(out, &entries); err != nil || code != 0 {
		t.Fatalf("ls --json: %v exit %d\n%s", err, code, out)
	}
	if len(entries) == 0 {
		t.Fatal("ls --json demo/hello/* found nothing")
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Ref, "demo/hello/") || e.Digest == "" {
			t.Errorf("entry %+v", e)
		}
	}
}

// The sdk pulls in glog, which registers flags such as -v and -log_dir on
// the standard flag set: none of them may leak into bst-cache's flags.
func TestNoGlogFlags(t *testing.T) {
	out, _, code := runCLI(t, "", "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, f := range []string{"logtostderr", "log_dir", "stderrthreshold", "vmodule", "alsologtostderr"} {
		if strings.Contains(out, f) {
			t.Errorf("--help shows glog's %s flag:\n%s", f, out)
		}
	}
	if _, _, code := runCLI(t, "", "--log_dir", "/tmp", "ls"); code != commands.ExitUsage {
		t.Errorf("--log_dir accepted: exit %d", code)
	}
}

// ls --cache lists what a serve holds, under a prefix; a server without
// the listing service says it cannot list (exit 1), pointing at --local.
func TestLsCache(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, srv)
	bazel := testenv.StartBazelRemote(t)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), false)+cacheTOML("bazel", bazel.URL(), false))
	out, stderr, code := runCLI(t, "", "--config", cfg, "ls", "--cache", "serve")
	if code != 0 || out != strings.Join(refs, "\n")+"\n" {
		t.Errorf("ls --cache serve: exit %d, %q; want %v\n%s", code, out, refs, stderr)
	}
	if out, _, _ := runCLI(t, "", "--config", cfg, "ls", "-l", "--cache", "serve", "demo/world"); strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "demo/world/") || !strings.Contains(out, "/") {
		t.Errorf("ls -l --cache serve demo/world: %q", out)
	}
	if _, stderr, code := runCLI(t, "", "--config", cfg, "ls", "--cache", "bazel"); code != 1 || !strings.Contains(stderr, "cannot list") || !strings.Contains(stderr, "--local DIR ls") {
		t.Errorf("ls --cache of bazel-remote: exit %d\n%s", code, stderr)
	}
}
