package cache

import (
	"context"
	"errors"
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
	s.IndexObjects(context.Background(), IndexOptions{Done: func(err error) { done <- err }})
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
	s.IndexObjects(context.Background(), IndexOptions{})
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
	s.IndexObjects(context.Background(), IndexOptions{Done: func(err error) { done <- err }})
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

// waitExact waits until the index of s follows the disk exactly.
func waitExact(t *testing.T, s *Store) {
	t.Helper()
	nowhere := []digest.Digest{digest.NewFromBlob([]byte("nowhere"))}
	for deadline := time.Now().Add(20 * time.Second); !s.Absent(nowhere)[0]; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the index never followed the disk")
		}
	}
}

// An object linked into a prefix directory the watch does not know yet,
// then removed by another process before the watch is drained (serve
// drains every 100 ms, or when asked): no event says so, since the
// directory is watched only once its creation is drained. The index must
// not keep it (a push once skipped a blob a target had lost,
// TestPushRepairsAndDoesNotClobber): once drained, it is absent.
func TestRemovalInNewPrefix(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.IndexObjects(ctx, IndexOptions{})
	if _, err := s.Add([]byte("makes the store")); err != nil {
		t.Fatal(err)
	}
	waitExact(t, s)
	var ds []digest.Digest
	// No drain between the write and the removal, as between two of
	// serve's: the watcher's lock held.
	w := s.index.Load().w.Load()
	w.mu.Lock()
	for i := 0; len(ds) < 5; i++ {
		data := fmt.Appendf(nil, "in a new prefix %d", i)
		d := digest.NewFromBlob(data)
		if _, err := os.Stat(filepath.Dir(s.ObjectPath(d))); err == nil {
			continue
		}
		if _, err := s.Add(data); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(s.ObjectPath(d)); err != nil { // another process
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	w.mu.Unlock()
	// Absent first: on its own, Present asks the disk where it has no
	// answer, and that may have corrected the index.
	if diff := cmp.Diff([]bool{true, true, true, true, true}, s.Absent(ds)); diff != "" {
		t.Errorf("Absent of objects removed (-want +got):\n%s", diff)
	}
	got, err := s.Present(ds)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(make([]bool, len(ds)), got); diff != "" {
		t.Errorf("Present of objects removed (-want +got):\n%s", diff)
	}
}

// When the kernel's event queue overflows (more changes between two
// drains than fs.inotify.max_queued_events), the index says so, lets the
// disk answer, and is built again: exact once more, a removal it missed
// not present.
func TestIndexRebuiltAfterOverflow(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events")
	if err != nil {
		t.Skip(err)
	}
	var queue int
	if _, err := fmt.Sscan(string(b), &queue); err != nil || queue > 40000 {
		t.Skipf("max_queued_events %q: too many events to make", b)
	}
	dir := t.TempDir()
	other, err := Open(dir, KindBst1Artifact) // another process
	if err != nil {
		t.Fatal(err)
	}
	gone, err := other.Add([]byte("removed while the queue overflowed"))
	if err != nil {
		t.Fatal(err)
	}
	// Every prefix directory there, and so watched: each write is an
	// event.
	objects := filepath.Dir(filepath.Dir(other.ObjectPath(gone)))
	for i := range 256 {
		if err := os.MkdirAll(filepath.Join(objects, fmt.Sprintf("%02x", i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(dir, KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lost := make(chan error, 10)
	s.IndexObjects(ctx, IndexOptions{Lost: func(err error) { lost <- err }})
	waitExact(t, s)

	w := s.index.Load().w.Load()
	w.mu.Lock() // no drain until the queue overflowed
	var written []digest.Digest
	for i := range queue + 10 {
		d, err := other.Add(fmt.Appendf(nil, "object %d", i))
		if err != nil {
			w.mu.Unlock()
			t.Fatal(err)
		}
		written = append(written, d)
	}
	if err := other.RemoveObject(gone); err != nil {
		w.mu.Unlock()
		t.Fatal(err)
	}
	w.mu.Unlock()

	if got := present(t, s, gone, written[len(written)-1]); got[0] || !got[1] {
		t.Errorf("Present after the overflow: %v, want [false true]", got)
	}
	select {
	case err := <-lost:
		if !errors.Is(err, errOverflow) {
			t.Errorf("lost: %v, want the overflow", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the overflow was not told")
	}
	waitExact(t, s)
	if !s.Absent([]digest.Digest{gone})[0] {
		t.Error("rebuilt, the index still holds an object removed during the overflow")
	}
	for _, d := range written {
		if s.Absent([]digest.Digest{d})[0] {
			t.Fatalf("rebuilt, the index lacks %s", d)
		}
	}
}
