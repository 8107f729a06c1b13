package commands_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// bst2Store writes BuildStream 2 artifacts and a source into a bst2 store,
// as BuildStream 2 lays them out. It returns the buildtree's file digest.
func bst2Store(t *testing.T, dir string) (buildtreeFile digest.Digest) {
	t.Helper()
	s, err := cache.Open(dir, cache.KindBst2Artifact)
	if err != nil {
		t.Fatal(err)
	}
	add := func(data []byte) *repb.Digest {
		d, err := s.Add(data)
		if err != nil {
			t.Fatal(err)
		}
		return d.ToProto()
	}
	addDir := func(d *repb.Directory) *repb.Digest {
		data, _ := proto.Marshal(d)
		return add(data)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB: streamed
	sub := addDir(&repb.Directory{Files: []*repb.FileNode{{Name: "b.bin", Digest: add(big)}}})
	files := addDir(&repb.Directory{
		Files:       []*repb.FileNode{{Name: "a.txt", Digest: add([]byte("a\n"))}, {Name: "empty", Digest: add(nil)}, {Name: "run", Digest: add([]byte("#!/bin/sh\n")), IsExecutable: true}},
		Directories: []*repb.DirectoryNode{{Name: "sub", Digest: sub}},
		Symlinks:    []*repb.SymlinkNode{{Name: "link", Target: "a.txt"}},
	})
	btFile := []byte("only in the buildtree\n")
	buildtree := addDir(&repb.Directory{Files: []*repb.FileNode{{Name: "build.txt", Digest: add(btFile)}}})
	for _, a := range []struct {
		ref     string
		success bool
	}{{"proj/elem/key1", true}, {"proj/failed/key2", false}} {
		art := &bspb.Artifact{
			Version: 1, BuildSuccess: a.success, StrongKey: filepath.Base(a.ref), Files: files,
			Logs:       []*bspb.Artifact_LogFile{{Name: "build.log", Digest: add([]byte("log of " + a.ref))}},
			PublicData: add([]byte("public: data\n")), LowDiversityMeta: add([]byte("low\n")),
			HighDiversityMeta: add([]byte("high " + a.ref + "\n")), Buildtree: buildtree,
		}
		data, _ := proto.Marshal(art)
		data = append(data, 0x98, 0x06, 0x01) // field 99, unknown to us: must survive
		if err := s.SetRef(cache.KindArtifact, a.ref, data); err != nil {
			t.Fatal(err)
		}
	}
	src, _ := proto.Marshal(&bspb.Source{Version: 1, Files: files})
	if err := s.SetRef(cache.KindSource, "proj/elem/srckey", src); err != nil {
		t.Fatal(err)
	}
	return digest.NewFromBlob(btFile)
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// BuildStream 2 artifacts round-trip through serve byte for byte;
// buildtrees move only with --with-buildtrees; a failed build is not
// promoted; sources go with --kind source.
func TestBst2RoundTrip(t *testing.T) {
	s1 := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	s2 := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	origin := t.TempDir()
	btFile := bst2Store(t, origin)
	cfg := writeConfig(t, "format = \"bst2\"\n"+cacheTOML("s1", s1.URL(), true)+cacheTOML("s2", s2.URL(), true))
	run := func(want int, args ...string) string {
		t.Helper()
		stdout, stderr, code := runCLI(t, "", append([]string{"--config", cfg}, args...)...)
		if code != want {
			t.Fatalf("%v: exit %d, want %d\n%s", args, code, want, stderr)
		}
		return stdout + stderr
	}
	run(0, "--local", origin, "push", "--cache", "s1", "proj/*")
	run(0, "--local", origin, "push", "--cache", "s1", "--kind", "source", "proj/elem/srckey")

	lean := t.TempDir()
	run(0, "--local", lean, "pull", "proj/elem/key1")
	artRef := filepath.Join("artifacts", "refs", "proj", "elem", "key1")
	if !bytes.Equal(readFile(t, filepath.Join(origin, artRef)), readFile(t, filepath.Join(lean, artRef))) {
		t.Error("the Artifact proto did not survive byte for byte")
	}
	ls, _ := cache.Open(lean, cache.KindBst2Artifact)
	if ok, _ := ls.Has(btFile); ok {
		t.Error("the buildtree was pulled without --with-buildtrees")
	}
	full := t.TempDir()
	run(0, "--local", full, "pull", "--with-buildtrees", "proj/elem/key1")
	fs, _ := cache.Open(full, cache.KindBst2Artifact)
	if ok, _ := fs.Has(btFile); !ok {
		t.Error("--with-buildtrees did not pull the buildtree")
	}
	// Everything the artifact names is local in both.
	for _, dir := range []string{lean, full} {
		st, _ := cache.Open(dir, cache.KindBst2Artifact)
		data, _ := st.GetRef(cache.KindArtifact, "proj/elem/key1")
		art, err := buildstream.ParseArtifact(data)
		if err != nil {
			t.Fatal(err)
		}
		roots, optional, _ := buildstream.ArtifactRoots(art)
		if dir == full {
			roots.Add(optional)
		}
		if _, missing, err := st.ClosureOf(roots); err != nil || len(missing) > 0 {
			t.Errorf("%s: closure missing %v %v", dir, missing, err)
		}
	}

	stage := t.TempDir()
	stderr := run(0, "--local", stage, "copy", "--from", "s1", "--to", "s2", "proj/elem/key1", "proj/failed/key2")
	if !strings.Contains(stderr, "proj/failed/key2") || !strings.Contains(stderr, "not promoted") {
		t.Errorf("the failed build was not reported as held back:\n%s", stderr)
	}
	if _, err := os.Stat(filepath.Join(s2.Dir, "artifacts", "refs", "proj", "failed", "key2")); err == nil {
		t.Error("a failed build was promoted")
	}
	if !bytes.Equal(readFile(t, filepath.Join(origin, artRef)), readFile(t, filepath.Join(s2.Dir, artRef))) {
		t.Error("the promoted Artifact proto differs from the original")
	}
	// s2 got no buildtree; --with-buildtrees adds it to the target that
	// has the rest, and says so.
	s2Store, _ := cache.Open(s2.Dir, cache.KindBst2Artifact)
	if ok, _ := s2Store.Has(btFile); ok {
		t.Fatal("the buildtree was copied without --with-buildtrees")
	}
	rep, stderr, code := runJSON(t, "--config", cfg, "--local", stage, "copy", "--with-buildtrees", "--from", "s1", "--to", "s2", "proj/elem/key1")
	if code != 0 || statuses(rep) != "repaired@s2" {
		t.Errorf("copy --with-buildtrees to a target without the buildtree: exit %d, %+v\n%s", code, rep.Refs, stderr)
	}
	if ok, _ := s2Store.Has(btFile); !ok {
		t.Error("copy --with-buildtrees did not add the buildtree to the target")
	}
	run(0, "--local", stage, "copy", "--from", "s1", "--to", "s2", "--include-failed", "proj/failed/key2")
	if _, err := os.Stat(filepath.Join(s2.Dir, "artifacts", "refs", "proj", "failed", "key2")); err != nil {
		t.Errorf("--include-failed did not promote: %v", err)
	}

	srcDir := t.TempDir()
	run(0, "--local", srcDir, "pull", "--kind", "source", "proj/elem/srckey")
	srcRef := filepath.Join("source_protos", "proj", "elem", "srckey")
	if !bytes.Equal(readFile(t, filepath.Join(origin, srcRef)), readFile(t, filepath.Join(srcDir, srcRef))) {
		t.Error("the Source proto did not round-trip")
	}
}

// bst2Artifact stores a small BuildStream 2 artifact for element in
// project under its strong key's ref only, recording its weak key and
// build dependencies as BuildStream 2 does.
func bst2Artifact(t *testing.T, s *cache.Store, project, element, strong, weak string, deps ...*bspb.Artifact_Dependency) string {
	t.Helper()
	add := func(data []byte) *repb.Digest {
		d, err := s.Add(data)
		if err != nil {
			t.Fatal(err)
		}
		return d.ToProto()
	}
	dir, _ := proto.Marshal(&repb.Directory{Files: []*repb.FileNode{{Name: element + ".txt", Digest: add([]byte(element + "\n"))}}})
	art := &bspb.Artifact{
		Version: 1, BuildSuccess: true, StrongKey: strong, WeakKey: weak, Files: add(dir), BuildDeps: deps,
		LowDiversityMeta: add([]byte("low\n")), HighDiversityMeta: add([]byte("high " + element + "\n")),
	}
	data, _ := proto.Marshal(art)
	ref := buildstream.ArtifactRef(project, element+".bst", strong)
	if err := s.SetRef(cache.KindBst2Artifact, ref, data); err != nil {
		t.Fatal(err)
	}
	return ref
}

// BuildStream 2 (crafted artifacts, through serve): push writes an
// Artifact under the URIs of both its keys; copy --deps all REF follows
// Artifact.build_deps across projects; pull stores every ref.
func TestBst2KeysAndDeps(t *testing.T) {
	s1 := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	s2 := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	origin := t.TempDir()
	s, err := cache.Open(origin, cache.KindBst2Artifact)
	if err != nil {
		t.Fatal(err)
	}
	dep := func(project, element, key string) *bspb.Artifact_Dependency {
		return &bspb.Artifact_Dependency{ProjectName: project, ElementName: element, CacheKey: key}
	}
	bst2Artifact(t, s, "proj", "base", "b1", "b1")
	bst2Artifact(t, s, "sub", "libsub", "s1", "s1w")
	bst2Artifact(t, s, "proj", "lib", "l1", "l1w", dep("proj", "base.bst", "b1"))
	app := bst2Artifact(t, s, "proj", "app", "a1", "a1w", dep("proj", "lib.bst", "l1"), dep("proj", "base.bst", "b1"), dep("sub", "libsub.bst", "s1"))
	cfg := writeConfig(t, "format = \"bst2\"\n"+cacheTOML("s1", s1.URL(), true)+cacheTOML("s2", s2.URL(), true))
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", origin, "push", "--cache", "s1", "--deps", "all", app); code != 0 {
		t.Fatalf("push --deps all: exit %d\n%s", code, stderr)
	}
	want := []string{"proj/app/a1", "proj/app/a1w", "proj/base/b1", "proj/lib/l1", "proj/lib/l1w", "sub/libsub/s1", "sub/libsub/s1w"}
	if diff := cmp.Diff(want, bst2Refs(t, s1.Dir)); diff != "" {
		t.Errorf("refs on s1 after push --deps all (-want +got):\n%s", diff)
	}
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", t.TempDir(), "copy", "--from", "s1", "--to", "s2", "--deps", "all", app); code != 0 {
		t.Fatalf("copy --deps all: exit %d\n%s", code, stderr)
	}
	if diff := cmp.Diff(want, bst2Refs(t, s2.Dir)); diff != "" {
		t.Errorf("refs on s2 after copy --deps all (-want +got):\n%s", diff)
	}
	local := t.TempDir()
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "pull", "--deps", "build", "proj/app/a1w"); code != 0 {
		t.Fatalf("pull --deps build by weak key: exit %d\n%s", code, stderr)
	}
	if diff := cmp.Diff(want, bst2Refs(t, local)); diff != "" {
		t.Errorf("local refs after pull (-want +got):\n%s", diff)
	}
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "pull", "--deps", "run", app); code != 2 || !strings.Contains(stderr, "run-time dependencies are not recorded") {
		t.Errorf("pull --deps run of a ref: exit %d\n%s", code, stderr)
	}
}

// bst2Refs lists the BuildStream 2 artifact refs under dir, sorted.
func bst2Refs(t *testing.T, dir string) []string {
	t.Helper()
	s, err := cache.OpenReadOnly(dir, cache.KindBst2Artifact)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := s.ListRefs(cache.KindBst2Artifact, "")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, i := range infos {
		out = append(out, i.Name)
	}
	return out
}
