package commands_test

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// largestObject finds the biggest blob in a server's store: the 3 MiB file
// of the test project, streamed through ByteStream.
func largestObject(t *testing.T, dir string) string {
	t.Helper()
	var hash string
	var size int64
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "objects") {
			if info, _ := d.Info(); info != nil && info.Size() > size {
				size, hash = info.Size(), filepath.Base(filepath.Dir(p))+filepath.Base(p)
			}
		}
		return nil
	})
	if hash == "" {
		t.Fatal("no objects")
	}
	return hash
}

// Priority: [dead, incomplete, corrupt, good] pulls from good with one
// warning each for dead, incomplete and corrupt, and stores nothing bad;
// [A has it, B has it] is served from A.
func TestPullPriority(t *testing.T) {
	good := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, good)
	big := largestObject(t, good.Dir)
	incomplete := testenv.StartProxy(t, good.Addr, testenv.ProxyFaults{Hide: map[string]bool{big: true}})
	corrupt := testenv.StartProxy(t, good.Addr, testenv.ProxyFaults{Corrupt: map[string]bool{big: true}})
	dead := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))

	// Each cache is an index and a store, so the incomplete and corrupt
	// ones name the ref; their storage fails on the big blob, which then
	// comes from the next cache down.
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("dead", dead, false)+
		cacheTOML("incomplete", "http://"+incomplete, false)+cacheTOML("corrupt", "http://"+corrupt, false)+
		cacheTOML("good", good.URL(), false))
	local := t.TempDir()
	stdout, stderr, code := runCLI(t, "", append([]string{"--config", cfg, "--local", local, "--json", "pull"}, refs...)...)
	if code != 0 {
		t.Fatalf("pull: exit %d\n%s", code, stderr)
	}
	for _, want := range []string{"cache dead (" + dead + ")", "cache incomplete (http://" + incomplete + ") names it but lacks 1 of its blobs", "corrupt (http://" + corrupt + ") sent corrupt data, not stored"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not warn %q:\n%s", want, stderr)
		}
	}
	var rep pullReport
	if err := decodeDoc(stdout, &rep); err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Refs {
		if r.Status != "done" {
			t.Errorf("%s: %s (%s)", r.Ref, r.Status, r.Reason)
		}
	}
	obj := filepath.Join(local, "cas", "objects", big[:2], big[2:])
	data, err := os.ReadFile(obj)
	if err != nil {
		t.Fatalf("the big blob was not pulled from good: %v", err)
	}
	if fmt.Sprintf("%x", sha256sum(data)) != big {
		t.Error("the big blob stored locally does not match its digest")
	}

	// Only the incomplete and corrupt caches: the ref fails, naming what
	// was missing where, and no local ref is written.
	cfg = writeConfig(t, "format = \"bst1\"\n"+cacheTOML("incomplete", "http://"+incomplete, false)+cacheTOML("corrupt", "http://"+corrupt, false))
	local2 := t.TempDir()
	stdout, stderr, code = runCLI(t, "", "--config", cfg, "--local", local2, "pull", bigRef(t, refs))
	if code != 1 || !strings.Contains(stdout, "incomplete everywhere") || !strings.Contains(stdout, big) {
		t.Errorf("pull from only bad caches: exit %d; want 1 naming the missing blob\n%s", code, stderr)
	}
	if got := testenv.RefsOnDisk(t, local2); len(got) != 0 {
		t.Errorf("a ref was written without its blobs: %v", got)
	}
	if _, err := os.Stat(filepath.Join(local2, "cas", "objects", big[:2], big[2:])); err == nil {
		t.Error("a corrupt blob was stored")
	}

	// [A has it, B has it]: served from A.
	other := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	cfgAB := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("a", other.URL(), true)+cacheTOML("b", good.URL(), false))
	if _, stderr, code := runCLI(t, "", "--config", cfgAB, "--local", local, "push", "--cache", "a", refs[0]); code != 0 {
		t.Fatalf("push to a: %d\n%s", code, stderr)
	}
	stdout, _, code = runCLI(t, "", "--config", cfgAB, "--local", t.TempDir(), "--json", "pull", refs[0])
	if err := decodeDoc(stdout, &rep); err != nil || code != 0 || rep.Refs[0].Cache != "a" {
		t.Errorf("pull with [a, b] both holding it: exit %d, %+v, %v; want it from a", code, rep, err)
	}
}

// bigRef is the ref whose artifact holds the big file (hello).
func bigRef(t *testing.T, refs []string) string {
	for _, r := range refs {
		if strings.HasPrefix(r, "demo/hello/") {
			return r
		}
	}
	t.Fatal("no hello ref")
	return ""
}

func sha256sum(b []byte) [32]byte { return sha256.Sum256(b) }
