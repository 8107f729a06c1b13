package cache_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// buildProject builds the test project with a real bst and returns it with
// the client that built it.
func buildProject(t *testing.T) (*testenv.Project, *testenv.Bst) {
	t.Helper()
	bst := testenv.NewBst(t)
	p := testenv.WriteProject(t, "demo")
	bst.Run(t, p.Dir, append([]string{"build"}, p.Elements...)...)
	return p, bst
}

func TestReadsWhatBstWrote(t *testing.T) {
	p, bst := buildProject(t)
	s, err := cache.Open(bst.ArtifactDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := s.ListRefs(cache.KindArtifact, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, i := range infos {
		got = append(got, i.Name)
	}
	if diff := cmp.Diff(testenv.RefsOnDisk(t, bst.ArtifactDir()), got); diff != "" {
		t.Errorf("ListRefs (-bst's refs +got):\n%s", diff)
	}
	// bst's own strong keys are among them.
	out := bst.Run(t, p.Dir, "show", "--deps", "none", "--format", "%{name} %{full-key}", "hello.bst", "world.bst")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		ref := "demo/" + strings.TrimSuffix(f[0], ".bst") + "/" + f[1]
		if _, err := s.GetRef(cache.KindArtifact, ref); err != nil {
			t.Errorf("bst's artifact %s: %v", ref, err)
		}
	}
	if len(got) < len(p.Elements) {
		t.Errorf("want at least one ref per element, got %v", got)
	}
	for _, ref := range got {
		root := readRoot(t, s, ref)
		all, missing, err := s.Closure(root)
		if err != nil {
			t.Fatalf("closure of %s: %v", ref, err)
		}
		if len(missing) != 0 || len(all) < 3 {
			t.Errorf("closure of %s: %d digests, missing %v", ref, len(all), missing)
		}
		for _, d := range all {
			if err := s.Verify(d); err != nil {
				t.Error(err)
			}
		}
	}
}

func readRoot(t *testing.T, s *cache.Store, ref string) digest.Digest {
	t.Helper()
	data, err := s.GetRef(cache.KindArtifact, ref)
	if err != nil {
		t.Fatal(err)
	}
	var d repb.Digest
	if err := proto.Unmarshal(data, &d); err != nil {
		t.Fatalf("ref %s: %v", ref, err)
	}
	dg, err := digest.NewFromProto(&d)
	if err != nil {
		t.Fatal(err)
	}
	return dg
}

// TestBstChecksOutWhatWeWrote copies every artifact object by object
// through the store's verified writer into a fresh BuildStream cache, then
// has a bst with no remote check the artifacts out.
func TestBstChecksOutWhatWeWrote(t *testing.T) {
	p, built := buildProject(t)
	src, err := cache.Open(built.ArtifactDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	fresh := testenv.NewBst(t)
	dst, err := cache.Open(fresh.ArtifactDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := src.ListRefs(cache.KindArtifact, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range infos {
		all, _, err := src.Closure(readRoot(t, src, info.Name))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range all {
			f, err := src.Open(d)
			if err != nil {
				t.Fatal(err)
			}
			err = dst.Put(d, f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		data, _ := src.GetRef(cache.KindArtifact, info.Name)
		if err := dst.SetRef(cache.KindArtifact, info.Name, data); err != nil {
			t.Fatal(err)
		}
	}
	for _, el := range p.Elements {
		out := filepath.Join(t.TempDir(), "checkout")
		fresh.Run(t, p.Dir, "checkout", el, out)
		want := testenv.TreeSnapshot(t, filepath.Join(p.Dir, "files", strings.TrimSuffix(el, ".bst")))
		if diff := cmp.Diff(want, testenv.TreeSnapshot(t, out)); diff != "" {
			t.Errorf("bst checkout %s (-source +checkout):\n%s", el, diff)
		}
	}
}
