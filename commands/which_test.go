package commands_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

type whichLoc struct {
	Ref    string
	Caches []struct {
		Name, Status, Digest, Error string
		Missing                     int
	}
	Note string
}

// which: present on A, absent on B, an error naming the dead cache, in
// priority order; exit 1 for a ref no answering cache holds while a cache
// could not be asked (exit 3 when all answer: TestOutageIsNotAMiss).
func TestWhich(t *testing.T) {
	a := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	b := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, a)
	dead := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("a", a.URL(), false)+cacheTOML("b", b.URL(), true)+cacheTOML("dead", dead, false))

	stdout, stderr, code := runCLI(t, "", "--config", cfg, "--json", "which", refs[0], "demo/none/0")
	if code != 1 {
		t.Errorf("which with a ref in no cache and a dead cache: exit %d; want 1\n%s", code, stderr)
	}
	var locs []whichLoc
	if err := decodeDoc(stdout, &locs); err != nil || len(locs) != 2 {
		t.Fatalf("--json: %v\n%s", err, stdout)
	}
	got := []string{}
	for _, s := range locs[0].Caches {
		got = append(got, s.Name+"="+s.Status)
	}
	if strings.Join(got, " ") != "a=present b=absent dead=error" || locs[0].Caches[0].Digest == "" || !strings.Contains(locs[0].Caches[2].Error, dead) {
		t.Errorf("which %s = %+v", refs[0], locs[0])
	}

	// Copy to b, then make a different digest appear on b: which says so.
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", t.TempDir(), "copy", "--from", "a", "--to", "b", refs[0]); code != 0 {
		t.Fatalf("copy: %d\n%s", code, stderr)
	}
	stdout, _, code = runCLI(t, "", "--config", cfg, "which", refs[0])
	lines := strings.Split(stdout, "\n")
	if code != 0 || len(lines) < 3 || strings.Fields(lines[0])[1] != "a" || strings.Join(strings.Fields(lines[1])[1:], " ") != "yes yes ERR" ||
		strings.Count(stdout, "cache dead (") != 1 {
		t.Errorf("after copy: exit %d; want one row, yes yes ERR, and dead's error once below\n%s", code, stdout)
	}
	// --cache asks only the caches named.
	stdout, _, code = runCLI(t, "", "--config", cfg, "which", "--cache", "b", refs[0])
	if code != 0 || strings.Contains(stdout, "dead") || !strings.Contains(stdout, "yes") {
		t.Errorf("which --cache b: exit %d\n%s", code, stdout)
	}
}
