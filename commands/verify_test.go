package commands_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

type verifyReport struct {
	Problems []struct {
		Object, Problem string
		Refs            []string
		Repaired        bool
	}
	Removed []string
}

// verify finds a flipped byte, a truncated object and a missing one in
// BuildStream 1's own cache, with the refs they break; --repair restores
// them from a cache, after which bst checks out what it built.
func TestVerifyAndRepair(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	p, builder, _ := builtProject(t, srv)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), false))
	local := builder.ArtifactDir()
	want := testenv.TreeSnapshot(t, builder.Checkout(t, p, "hello.bst"))

	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "verify"); code != 0 {
		t.Fatalf("verify of a healthy store: exit %d\n%s", code, stderr)
	}
	// Three objects of hello's artifact go bad: its largest file flipped,
	// another truncated, a third removed.
	objects := filepath.Join(local, "cas", "objects")
	big := largestObject(t, local)
	damage := map[string]func(string){
		big: func(p string) {
			data, _ := os.ReadFile(p)
			data[len(data)/2] ^= 1
			os.Chmod(p, 0o644)
			os.WriteFile(p, data, 0o644)
		},
	}
	var others []string
	filepath.WalkDir(objects, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && len(others) < 2 {
			if info, _ := d.Info(); info != nil && info.Size() > 8 {
				h := filepath.Base(filepath.Dir(path)) + filepath.Base(path)
				if h != big {
					others = append(others, h)
				}
			}
		}
		return nil
	})
	damage[others[0]] = func(p string) { os.Truncate(p, 3) }
	damage[others[1]] = func(p string) { os.Remove(p) }
	for h, f := range damage {
		f(filepath.Join(objects, h[:2], h[2:]))
	}

	stdout, _, code := runCLI(t, "", "--config", cfg, "--local", local, "--json", "verify")
	var rep verifyReport
	if err := decodeDoc(stdout, &rep); err != nil || code != 1 {
		t.Fatalf("verify of a damaged store: exit %d, %v\n%s", code, err, stdout)
	}
	found := map[string]string{}
	for _, pr := range rep.Problems {
		found[pr.Object[:64]] = pr.Problem
	}
	for h := range damage {
		if found[h] == "" {
			t.Errorf("verify did not report %s: %+v", h, rep.Problems)
		}
	}
	if found[big] != "corrupt" || found[others[1]] != "missing" {
		t.Errorf("problems %v; want the flipped object corrupt and the removed one missing", found)
	}

	stdout, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "--json", "verify", "--repair")
	if err := decodeDoc(stdout, &rep); err != nil || code != 0 || len(rep.Removed) != 0 {
		t.Fatalf("verify --repair: exit %d, %v, %+v\n%s", code, err, rep, stderr)
	}
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "verify"); code != 0 {
		t.Errorf("verify after --repair: exit %d\n%s", code, stderr)
	}
	srv.Stop()
	// bst's extract/ shares inodes with the objects damaged in place: let
	// it extract again from the repaired CAS.
	os.RemoveAll(filepath.Join(local, "extract"))
	if diff := cmp.Diff(want, testenv.TreeSnapshot(t, builder.Checkout(t, p, "hello.bst"))); diff != "" {
		t.Errorf("bst checkout after the repair (-before +after):\n%s", diff)
	}

	// No cache to repair from: the broken ref goes, exit 1, and what is
	// left is consistent.
	damage[big](filepath.Join(objects, big[:2], big[2:]))
	noCaches := writeConfig(t, "format = \"bst1\"\n")
	stdout, _, code = runCLI(t, "", "--config", noCaches, "--local", local, "--json", "verify", "--repair")
	if err := decodeDoc(stdout, &rep); err != nil || code != 1 || len(rep.Removed) != 1 {
		t.Errorf("verify --repair with no cache: exit %d, %v, %+v; want 1 with hello's ref removed", code, err, rep)
	}
	if _, stderr, code := runCLI(t, "", "--config", noCaches, "--local", local, "verify"); code != 0 {
		t.Errorf("verify after removing what could not be repaired: exit %d\n%s", code, stderr)
	}
}

// A BuildStream 2 artifact without its buildtree (pulled without
// --with-buildtrees, as BuildStream does by default) is whole: verify
// passes it. A buildtree that is there is checked: one missing a file is
// reported.
func TestVerifyBst2Buildtrees(t *testing.T) {
	dir := t.TempDir()
	btFile := bst2Store(t, dir)
	s, err := cache.Open(dir, cache.KindBst2Artifact)
	if err != nil {
		t.Fatal(err)
	}
	data, err := s.GetRef(cache.KindBst2Artifact, "proj/elem/key1")
	if err != nil {
		t.Fatal(err)
	}
	art := &bspb.Artifact{}
	if err := proto.Unmarshal(data, art); err != nil || art.GetBuildtree() == nil {
		t.Fatalf("the artifact names no buildtree (%v)", err)
	}
	verify := func() (verifyReport, int) {
		stdout, stderr, code := runCLI(t, "", "--format", "bst2", "--local", dir, "--json", "verify")
		var rep verifyReport
		if err := decodeDoc(stdout, &rep); err != nil {
			t.Fatalf("verify --json: %v\n%s%s", err, stdout, stderr)
		}
		return rep, code
	}
	if rep, code := verify(); code != 0 {
		t.Fatalf("verify of a whole store: exit %d, %+v", code, rep.Problems)
	}
	if err := os.Remove(objectFile(dir, btFile.Hash)); err != nil {
		t.Fatal(err)
	}
	if rep, code := verify(); code != 1 || len(rep.Problems) != 1 || rep.Problems[0].Object[:64] != btFile.Hash {
		t.Errorf("verify with a file of the buildtree removed: exit %d, %+v; want exit 1 and that file missing", code, rep.Problems)
	}
	if err := os.Remove(objectFile(dir, art.GetBuildtree().GetHash())); err != nil {
		t.Fatal(err)
	}
	if rep, code := verify(); code != 0 {
		t.Errorf("verify of artifacts without their buildtree: exit %d, %+v; want 0 (BuildStream pulls buildtrees on request)", code, rep.Problems)
	}
}
