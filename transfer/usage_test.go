package transfer

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
)

// Usage says of each ref what its closure in the store (Store.ClosureOf,
// one ref at a time) says, though it reads each Directory once across
// refs, several at a time, over batches of refs: trees shared by refs, a
// Directory and a file the store lacks, a corrupt Directory, the empty
// blob as a file and as a Directory, refs that cannot be read.
func TestUsageIsEachClosure(t *testing.T) {
	s, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	put := func(data []byte) digest.Digest {
		t.Helper()
		d, err := s.Add(data)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	dir := func(d *repb.Directory) digest.Digest {
		data, _ := proto.Marshal(d)
		return put(data)
	}
	node := func(name string, d digest.Digest) *repb.DirectoryNode {
		return &repb.DirectoryNode{Name: name, Digest: d.ToProto()}
	}
	file := func(name string, d digest.Digest) *repb.FileNode {
		return &repb.FileNode{Name: name, Digest: d.ToProto()}
	}
	empty := put(nil) // also the empty Directory
	shared := dir(&repb.Directory{Files: []*repb.FileNode{file("a", put([]byte("shared a"))), file("e", empty)}})
	lostFile := digest.NewFromBlob([]byte("never stored"))
	lostDir, _ := proto.Marshal(&repb.Directory{Files: []*repb.FileNode{file("x", put([]byte("under a lost dir")))}})
	corrupt := dir(&repb.Directory{Files: []*repb.FileNode{file("c", put([]byte("under a corrupt dir")))}})
	path := s.ObjectPath(corrupt)
	os.Chmod(path, 0o644)
	if err := os.WriteFile(path, []byte(strings.Repeat("!", int(corrupt.Size))), 0o644); err != nil {
		t.Fatal(err)
	}

	// More refs than a batch: every artifact under a strong and a weak ref.
	var refs []string
	for i := range refBatch/2 + 20 {
		files := []*repb.FileNode{file("own", put(fmt.Appendf(nil, "artifact %d", i))), file("e", empty)}
		dirs := []*repb.DirectoryNode{node("logs", empty), node("shared", shared)}
		switch i % 5 {
		case 1:
			files = append(files, file("lost", lostFile))
		case 2:
			dirs = append(dirs, node("lost", digest.NewFromBlob(lostDir)))
		case 3:
			dirs = append(dirs, node("corrupt", corrupt))
		case 4:
			dirs = append(dirs, node("again", shared))
		}
		root := dir(&repb.Directory{Files: files, Directories: dirs})
		for _, key := range []string{"strong", "weak"} {
			ref := fmt.Sprintf("p/e%04d/%s", i, key)
			if err := s.SetRef(cache.KindBst1Artifact, ref, buildstream.V1RefContent(root)); err != nil {
				t.Fatal(err)
			}
			refs = append(refs, ref)
		}
	}
	if err := s.SetRef(cache.KindBst1Artifact, "p/bad/ref", []byte("not a digest")); err != nil {
		t.Fatal(err)
	}
	refs = append(refs, "p/bad/ref", "p/no/such-ref", refs[3])

	// What one ClosureOf a ref says.
	want := make([]RefUsage, len(refs))
	var st StoreUsage
	reached := map[digest.Digest]bool{}
	for i, ref := range refs {
		want[i].Ref = ref
		en, err := localEntry(s, cache.KindBst1Artifact, ref)
		if err != nil {
			want[i].Error = err.Error()
			continue
		}
		roots := en.roots
		roots.Add(en.optional)
		all, missing, err := s.ClosureOf(roots)
		if err != nil {
			want[i].Error = err.Error()
			continue
		}
		want[i].Missing = len(missing)
		for _, d := range all {
			if !setOf(missing)[d] {
				want[i].Bytes += d.Size
				want[i].Blobs++
				if !reached[d] {
					reached[d] = true
					st.UniqueBytes += d.Size
				}
			}
		}
	}
	s.WalkObjects(func(o cache.ObjectInfo) error {
		st.Bytes += o.Digest.Size
		st.Objects++
		return nil
	})

	e := &Engine{Store: s, Kind: cache.KindBst1Artifact}
	var got []RefUsage
	// In one pass over the objects, and in passes of a few fan-out
	// directories each (the store holds about 2,200 objects).
	for _, perPass := range []int{objectsPerPass, 200} {
		objectsPerPass := setObjectsPerPass(t, perPass)
		u, err := e.Usage(context.Background(), refs)
		if err != nil {
			t.Fatal(err)
		}
		got = usages(t, u)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Usage, %d objects a pass (-ClosureOf +got):\n%s", objectsPerPass, diff)
		}
		if u.Store != st {
			t.Errorf("store, %d objects a pass: got %+v, want %+v", objectsPerPass, u.Store, st)
		}
	}
	kinds := map[string]int{}
	for _, u := range got {
		switch {
		case u.Error != "":
			kinds["error"]++
		case u.Missing > 0:
			kinds["missing"]++
		}
	}
	if kinds["error"] < 2+2*(refBatch/10) || kinds["missing"] < 4*(refBatch/10) {
		t.Errorf("the store was meant to hold broken refs: %v", kinds)
	}
}

// setObjectsPerPass sets objectsPerPass for the test.
func setObjectsPerPass(t testing.TB, n int) int {
	was := objectsPerPass
	objectsPerPass = n
	t.Cleanup(func() { objectsPerPass = was })
	return n
}

// usages are what Each says of u, which it closes.
func usages(t testing.TB, u *Usages) []RefUsage {
	t.Helper()
	defer u.Close()
	var out []RefUsage
	if err := u.Each(func(r RefUsage) error {
		out = append(out, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(out) != u.Len() {
		t.Fatalf("Each gave %d refs of %d", len(out), u.Len())
	}
	return out
}

// du of 3,000 artifacts (6,000 refs, 21,000 objects) made by
// scripts/genrefs, as bst 1 stores them.
func BenchmarkUsage(b *testing.B) {
	dir := b.TempDir()
	gen := exec.Command("go", "run", "../scripts/genrefs", "-n", "3000", dir)
	if out, err := gen.CombinedOutput(); err != nil {
		b.Fatalf("genrefs: %v\n%.2000s", err, out)
	}
	s, err := cache.OpenReadOnly(dir, cache.KindBst1Artifact)
	if err != nil {
		b.Fatal(err)
	}
	infos, err := s.ListRefs(cache.KindBst1Artifact, "")
	if err != nil || len(infos) != 6000 {
		b.Fatal(err, len(infos))
	}
	var refs []string
	for _, i := range infos {
		refs = append(refs, i.Name)
	}
	e := &Engine{Store: s, Kind: cache.KindBst1Artifact}
	b.ResetTimer()
	for b.Loop() {
		u, err := e.Usage(context.Background(), refs)
		if err != nil || u.Store.Objects != 21001 {
			b.Fatal(err, u.Store)
		}
		u.Close()
	}
}

// peakLive samples the live heap (as of the last collection, with
// collections made frequent) while fn runs: its peak above what was live
// before.
func peakLive(t testing.TB, fn func()) uint64 {
	t.Helper()
	defer debug.SetGCPercent(debug.SetGCPercent(5))
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	live := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	runtime.GC()
	base := live()
	peak := base
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			peak = max(peak, live())
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	fn()
	close(done)
	<-stopped
	runtime.GC()
	return max(peak, live()) - base
}

// du of every ref of a store holds 17 bytes a ref (not the refs' names:
// they wait in a temporary file) and a part of the objects at a time
// (objectsPerPass), whatever the store's size: 16,000 refs and 8,000
// objects, measured 1,000 objects at a time, need less than 2 MiB of
// heap beyond 32 bytes a ref (1.47 MB in all alone; 2.11-2.18 MB under
// -race on a machine at load 23-28, so 1.5 MiB was too tight). Holding
// each ref's name and result and a table of every object (as du did)
// takes twice the 1.5 MiB bound.
func TestUsageMemoryIsBounded(t *testing.T) {
	s, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	empty, err := s.Add(nil)
	if err != nil {
		t.Fatal(err)
	}
	const artifacts = 8000
	for i := range artifacts {
		data, _ := proto.Marshal(&repb.Directory{Files: []*repb.FileNode{{Name: fmt.Sprintf("f%d", i), Digest: empty.ToProto()}}})
		root, err := s.Add(data)
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{"strong", "weak"} {
			writeRef(t, s, fmt.Sprintf("p/e%05d/%x", i, sha256.Sum256(fmt.Appendf(nil, "%s %d", key, i))), root)
		}
	}
	setObjectsPerPass(t, 1000)
	e := &Engine{Store: s, Kind: cache.KindBst1Artifact}
	// The names' temporary file has no name even while du runs.
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	var st StoreUsage
	n := 0
	peak := peakLive(t, func() {
		u, err := e.UsageAll(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if left, _ := os.ReadDir(tmp); len(left) > 0 {
			t.Errorf("du left %s in the temporary directory", left[0].Name())
		}
		n, st = u.Len(), u.Store
		u.Close()
	})
	if n != 2*artifacts || st.Objects != artifacts+1 || st.UniqueBytes != st.Bytes {
		t.Fatalf("measured %d refs, store %+v", n, st)
	}
	bound := uint64(32*n + 2<<20)
	t.Logf("peak live heap %d bytes (%.0f a ref), bound %d", peak, float64(peak)/float64(n), bound)
	if peak > bound {
		t.Errorf("du of %d refs and %d objects held %d bytes at its peak, more than %d", n, st.Objects, peak, bound)
	}
}

// writeRef writes a BuildStream 1 ref to root as a file beside the store's
// API (SetRef syncs the file system each time, which would take minutes
// for thousands), and says where.
func writeRef(t testing.TB, s *cache.Store, ref string, root digest.Digest) string {
	t.Helper()
	path, err := s.RefPath(cache.KindBst1Artifact, ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buildstream.V1RefContent(root), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
