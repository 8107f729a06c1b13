package cache

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// Present and Absent answer from the index: what the walk found and what
// this Store writes is present, what it removes is not, and so for what
// another process writes or removes.
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

	// Another process's writes and removals are seen at once (inotify),
	// in a prefix directory that exists or one it makes.
	late, err := other.Add([]byte("written by another process after the walk"))
	if err != nil {
		t.Fatal(err)
	}
	var newPrefix digest.Digest
	for i := 0; ; i++ {
		data := fmt.Appendf(nil, "in a new prefix %d", i)
		d := digest.NewFromBlob(data)
		if _, err := os.Stat(filepath.Dir(s.ObjectPath(d))); err != nil {
			if _, err := other.Add(data); err != nil {
				t.Fatal(err)
			}
			newPrefix = d
			break
		}
	}
	if diff := cmp.Diff([]bool{true, true}, present(t, s, late, newPrefix)); diff != "" {
		t.Errorf("objects another process wrote: present (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]bool{false, false, true}, s.Absent([]digest.Digest{late, newPrefix, absent})); diff != "" {
		t.Errorf("Absent (-want +got):\n%s", diff)
	}
	if err := other.RemoveObject(before); err != nil {
		t.Fatal(err)
	}
	if present(t, s, before)[0] || !s.Absent([]digest.Digest{before})[0] {
		t.Error("an object another process removed is still present")
	}
}

// A store made after IndexObjects is watched from its first write.
func TestAbsentInNewStore(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	s.IndexObjects(context.Background(), nil)
	mine, err := s.Add([]byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := Open(dir, KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	var theirs digest.Digest
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Until the late walk is done, Absent says nothing for sure.
		theirs, err = other.Add(fmt.Appendf(nil, "theirs %v", time.Now()))
		if err != nil {
			t.Fatal(err)
		}
		if s.Absent([]digest.Digest{digest.NewFromBlob([]byte("nowhere"))})[0] || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !s.Absent([]digest.Digest{digest.NewFromBlob([]byte("nowhere"))})[0] {
		t.Fatal("the new store's index never followed the disk")
	}
	if got := s.Absent([]digest.Digest{mine, theirs}); got[0] || got[1] {
		t.Errorf("Absent of objects in the store: %v", got)
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
