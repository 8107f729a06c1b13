package cache

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"github.com/google/go-cmp/cmp"
)

// CheckDigest agrees with the SDK's Validate on every kind of digest.
func TestCheckDigest(t *testing.T) {
	good := digest.NewFromBlob([]byte("x")).Hash
	for _, d := range []digest.Digest{
		{Hash: good, Size: 1},
		{Hash: good, Size: 0},
		{Hash: good, Size: -1},
		{Hash: strings.ToUpper(good), Size: 1},
		{Hash: good[:63], Size: 1},
		{Hash: good + "0", Size: 1},
		{Hash: good[:63] + "g", Size: 1},
		{Hash: "../" + good[3:], Size: 1},
		{Hash: "", Size: 0},
		{Hash: good[:32] + "\x00" + good[33:], Size: 1},
	} {
		want := d.Validate() == nil
		if got := CheckDigest(d) == nil; got != want {
			t.Errorf("CheckDigest(%q/%d) ok = %v, Validate says %v", d.Hash, d.Size, got, want)
		}
	}
}

// indexed opens dir with an object index and waits for its walk.
func indexed(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	s.IndexObjects(context.Background(), func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return s
}

func present(t *testing.T, s *Store, ds ...digest.Digest) []bool {
	t.Helper()
	got, err := s.Present(ds)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// Present answers from the index: what the walk found and what this Store
// writes is present, what it removes is not; what another process does
// behind its back is seen as Present documents, and Has (which every ref
// write's closure check uses) corrects it.
func TestPresentFromIndex(t *testing.T) {
	dir := t.TempDir()
	other, err := Open(dir, KindBst1Artifact) // another process on the same store
	if err != nil {
		t.Fatal(err)
	}
	before, err := other.Add([]byte("there before the walk"))
	if err != nil {
		t.Fatal(err)
	}
	s := indexed(t, dir)
	absent := digest.NewFromBlob([]byte("nowhere"))
	written, err := s.Add([]byte("written through the indexed store"))
	if err != nil {
		t.Fatal(err)
	}
	wrongSize := digest.Digest{Hash: before.Hash, Size: before.Size + 1}
	if diff := cmp.Diff([]bool{true, true, false, false}, present(t, s, before, written, absent, wrongSize)); diff != "" {
		t.Errorf("Present (-want +got):\n%s", diff)
	}

	if err := s.RemoveObject(written); err != nil {
		t.Fatal(err)
	}
	if present(t, s, written)[0] {
		t.Error("an object this store removed is present")
	}

	// Behind its back: an object another process writes reads as absent
	// (an upload too many), one it removes as present until Has looks.
	late, err := other.Add([]byte("written by another process after the walk"))
	if err != nil {
		t.Fatal(err)
	}
	if present(t, s, late)[0] {
		t.Error("an object written behind the index's back is present: the index is not what answers")
	}
	if ok, _ := s.Has(late); !ok || !present(t, s, late)[0] {
		t.Error("Has found the late object, but the index still lacks it")
	}
	if err := os.Remove(s.ObjectPath(before)); err != nil {
		t.Fatal(err)
	}
	if !present(t, s, before)[0] {
		t.Error("an object removed behind the index's back is absent at once: the index is not what answers")
	}
	if ok, _ := s.Has(before); ok || present(t, s, before)[0] {
		t.Error("Has found the object gone, but the index still has it")
	}
}

// Until its walk is done, the index asks the disk about what it lacks; a
// removal while the walk runs is not undone by the walk.
func TestPresentWhileIndexing(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	var ds []digest.Digest
	for i := range 300 {
		d, err := s.Add(fmt.Appendf(nil, "object %d", i))
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	done := make(chan error, 1)
	s.IndexObjects(context.Background(), func(err error) { done <- err })
	gone := ds[:100]
	for _, d := range gone {
		if err := s.RemoveObject(d); err != nil {
			t.Fatal(err)
		}
	}
	got := present(t, s, ds...) // mid-walk, or after
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	after := present(t, s, ds...)
	for i := range ds {
		want := i >= len(gone)
		if got[i] != want || after[i] != want {
			t.Errorf("object %d: present %v during the walk, %v after; want %v", i, got[i], after[i], want)
		}
	}
}
