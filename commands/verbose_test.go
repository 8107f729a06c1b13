package commands_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// -v logs each cache tried per ref and the refs skipped, and ends with a
// table of what each cache did: refs served, blobs and bytes, errors,
// seconds. --json carries the same per cache.
func TestVerboseCacheTable(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	src := t.TempDir()
	bst1Artifact(t, src, "proj/one/key", 3, 1<<10, 100<<10)
	bst1ArtifactSeeded(t, src, "proj/two/key", 3, 1<<10, 100<<10, 2)
	dead := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("empty", testenv.StartServe(t, testenv.ServeOptions{}).URL(), false)+cacheTOML("dead", dead, false)+cacheTOML("serve", srv.URL(), true))
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", src, "push", "proj/one/key", "proj/two/key"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, stderr)
	}
	local := t.TempDir()
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "pull", "proj/one/key"); code != 0 {
		t.Fatalf("pull: exit %d\n%s", code, stderr)
	}
	_, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "-v", "pull", "proj/one/key", "proj/two/key")
	if code != 0 {
		t.Fatalf("pull -v: exit %d\n%s", code, stderr)
	}
	for _, want := range []string{
		"proj/one/key: complete in the local store: skipped",
		"proj/two/key: cache empty: miss",
		"proj/two/key: cache serve: names ",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("pull -v does not log %q\n%s", want, stderr)
		}
	}
	if !regexp.MustCompile(`proj/two/key: cache dead: (error|not asked)`).MatchString(stderr) {
		t.Errorf("pull -v does not log the dead cache\n%s", stderr)
	}
	// cache  refs  blobs  bytes  errors  seconds
	rows := map[string][]string{}
	header := false
	for _, line := range strings.Split(stderr, "\n") {
		f := strings.Fields(line)
		header = header || strings.Join(f, " ") == "cache refs blobs bytes errors seconds"
		if len(f) == 6 && (f[0] == "empty" || f[0] == "dead" || f[0] == "serve") {
			rows[f[0]] = f
		}
	}
	if !header || len(rows) != 3 {
		t.Fatalf("no per-cache table\n%s", stderr)
	}
	if r := rows["serve"]; r[1] != "1" || r[2] != "6" || r[4] != "0" {
		t.Errorf("serve's row %v; want 1 ref, 6 blobs (2 Directories, 4 files), no errors", r)
	}
	if r := rows["dead"]; r[1] != "0" || r[4] == "0" {
		t.Errorf("dead's row %v; want no refs and its errors counted", r)
	}
	if r := rows["empty"]; r[1] != "0" || r[2] != "0" || r[4] != "0" {
		t.Errorf("empty's row %v; want a miss that is no error", r)
	}
	var rep struct {
		Caches []struct {
			Name                string
			Refs, Blobs, Errors int
		}
	}
	stdout, _, _ := runCLI(t, "", "--config", cfg, "--local", t.TempDir(), "--json", "pull", "proj/two/key")
	if err := decodeDoc(stdout, &rep); err != nil || len(rep.Caches) != 3 || rep.Caches[2].Name != "serve" || rep.Caches[2].Refs != 1 || rep.Caches[2].Blobs != 6 {
		t.Errorf("--json caches: %v %+v\n%s", err, rep.Caches, stdout)
	}
}
