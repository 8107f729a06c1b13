package commands_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bst-cache/bst-cache/internal/linksim"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// lsRefs writes what `ls` prints for a store (each artifact's strong and
// weak refs) to a file for --refs-from, and returns the file and the refs.
func lsRefs(t *testing.T, store string) (string, []string) {
	t.Helper()
	out, stderr, code := runCLI(t, "", "--format", "bst1", "--local", store, "ls")
	if code != 0 {
		t.Fatalf("ls: exit %d\n%s", code, stderr)
	}
	return writeFile(t, "refs", out), strings.Fields(out)
}

// An artifact is one unit: a copy of what ls prints, where each artifact
// comes under its strong and its weak ref, pushes each blob once and says
// done for every ref. The two refs raced: every blob went twice (pushed
// about 2x what was pulled) and the second ref was reported skipped or in
// conflict. Ten copies from bst-artifact-server into fresh targets, serve
// and bst-artifact-server in turn.
func TestCopyOfLsMovesEachArtifactOnce(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	testenv.Genrefs(t, src, "-n", "12", "-files", "8", "-size", "40000")
	refsFile, refs := lsRefs(t, src)
	if len(refs) != 24 {
		t.Fatalf("ls lists %d refs, want 12 artifacts under 2 refs each", len(refs))
	}
	a := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Dir: src})
	for i := range 10 {
		kind := []string{"serve", "bst-artifact-server"}[i%2]
		b := startPushServer(t, kind)
		cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("a", a.URL(), false)+cacheTOML("b", b.URL(), true))
		rep, stderr, code := runJSON(t, "--config", cfg, "--local", t.TempDir(), "copy", "--from", "a", "--to", "b", "--refs-from", refsFile)
		if code != 0 || rep.Counts["done"] != len(refs) {
			t.Fatalf("run %d to %s: exit %d, %v; want done for all %d refs\n%s", i, kind, code, rep.Counts, len(refs), stderr)
		}
		t.Logf("run %d to %s: pulled %d bytes, pushed %d bytes (%.3fx)", i, kind, rep.Pulled.Bytes, rep.Pushed.Bytes, float64(rep.Pushed.Bytes)/float64(rep.Pulled.Bytes))
		if rep.Pulled.Bytes == 0 || float64(rep.Pushed.Bytes) > 1.02*float64(rep.Pulled.Bytes) {
			t.Errorf("run %d to %s: pulled %d bytes, pushed %d; want pushed <= 1.02x pulled", i, kind, rep.Pulled.Bytes, rep.Pushed.Bytes)
		}
		if got := testenv.RefsOnDisk(t, b.Dir); len(got) != len(refs) {
			t.Errorf("run %d to %s: the target holds %d refs, want %d", i, kind, len(got), len(refs))
		}
		b.Kill() // at once: bst-artifact-server takes its grace period on SIGTERM
	}
}

// A no-op copy on a fresh runner (an empty local store) asks the target
// first: the target names the digest the source names and holds every
// blob, so the copy confirms the source (Directories and
// FindMissingBlobs) and moves no file. It used to pull everything first.
// A target that is down fails every ref before anything is pulled for
// it. The artifacts are scripts/bench-transfers' set (40 elements of 60
// files of 100 kB, by scripts/genrefs); bytes are counted on links in
// front of both servers (serve) and by the engine.
func TestNoOpCopyMovesNoFiles(t *testing.T) {
	const n, files, size = 40, 60, 100000
	dirs := map[string]string{"src": filepath.Join(t.TempDir(), "src"), "dst": filepath.Join(t.TempDir(), "dst")}
	testenv.Genrefs(t, dirs["src"], "-n", fmt.Sprint(n), "-files", fmt.Sprint(files), "-size", fmt.Sprint(size))
	linkTree(t, dirs["src"], dirs["dst"])
	refsFile, refs := lsRefs(t, dirs["src"])
	a := testenv.StartServe(t, testenv.ServeOptions{Dir: dirs["src"]})
	b := testenv.StartServe(t, testenv.ServeOptions{Dir: dirs["dst"], Push: true})
	aLink, aAddr := testenv.StartLink(t, a.Addr, linksim.Profile{})
	bLink, bAddr := testenv.StartLink(t, b.Addr, linksim.Profile{})
	dead := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("a", "http://"+aAddr, false)+cacheTOML("b", "http://"+bAddr, true)+cacheTOML("dead", dead, true))

	rep, stderr, code := runJSON(t, "--config", cfg, "--local", t.TempDir(), "copy", "--from", "a", "--to", "b", "--refs-from", refsFile)
	if code != 0 || rep.Counts["skipped"] != len(refs) {
		t.Fatalf("no-op copy: exit %d, %v; want all %d refs skipped\n%s", code, rep.Counts, len(refs), stderr)
	}
	content := int64(n * files * size)
	aUp, aDown := aLink.Bytes()
	bUp, bDown := bLink.Bytes()
	crossed := aUp + aDown + bUp + bDown
	t.Logf("no-op copy of %d refs (%d bytes of files): %d bytes crossed the links (%.3f%%), engine pulled %d, pushed %d",
		len(refs), content, crossed, 100*float64(crossed)/float64(content), rep.Pulled.Bytes, rep.Pushed.Bytes)
	if rep.Pulled.Blobs != 0 || rep.Pushed.Blobs != 0 || crossed*100 >= content {
		t.Errorf("no-op copy: pulled %d blobs, pushed %d, %d bytes crossed the links; want nothing moved and < 1%% of %d bytes", rep.Pulled.Blobs, rep.Pushed.Blobs, crossed, content)
	}

	// The target is down: every ref fails, and nothing is pulled for it.
	beforeUp, beforeDown := aLink.Bytes()
	local := t.TempDir()
	rep, stderr, code = runJSON(t, "--config", cfg, "--local", local, "copy", "--from", "a", "--to", "dead", "--refs-from", refsFile)
	if code != 1 || rep.Counts["failed"] != len(refs) || rep.Pulled.Blobs != 0 {
		t.Errorf("copy to a target that is down: exit %d, %v, pulled %d blobs; want all failed, nothing pulled\n%s", code, rep.Counts, rep.Pulled.Blobs, stderr)
	}
	up, down := aLink.Bytes()
	if moved := up - beforeUp + down - beforeDown; moved >= content/1000 {
		t.Errorf("copy to a target that is down: %d bytes crossed the source's link", moved)
	}
	if entries, _ := os.ReadDir(filepath.Join(local, "cas", "objects")); len(entries) != 0 {
		t.Errorf("copy to a target that is down stored %d object directories", len(entries))
	}
}

// linkTree makes dst a copy of the store src through hard links: both
// servers hold the same artifacts without writing them twice (stores
// replace files, never write them in place).
func linkTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		return os.Link(p, filepath.Join(dst, rel))
	})
	if err != nil {
		t.Fatal(err)
	}
}
