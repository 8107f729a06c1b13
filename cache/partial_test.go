package cache

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// A download cut short keeps its bytes under tmp, never under the final
// name; the next writer of the digest goes on after them, and the whole
// blob is still checked at Commit: a kept prefix that changed on disk
// fails it, and the bytes are removed.
func TestResumableWriter(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7 / 3)
	}
	d := digest.NewFromBlob(data)
	half := int64(len(data) / 2)
	partial := filepath.Join(s.tmp, partialPrefix+d.Hash+"-1048576")

	w, err := s.ResumableWriter(d)
	if err != nil || w.Written() != 0 {
		t.Fatalf("first writer: %v, %d bytes kept", err, w.Written())
	}
	if _, err := w.Write(data[:half]); err != nil {
		t.Fatal(err)
	}
	w.Keep()
	if ok, _ := s.Has(d); ok {
		t.Fatal("a kept write is under the blob's final name")
	}
	if st, err := os.Stat(partial); err != nil || st.Size() != half {
		t.Fatalf("kept bytes: %v %v", st, err)
	}

	// While one writer holds the partial bytes, another starts afresh.
	w, err = s.ResumableWriter(d)
	if err != nil || w.Written() != half {
		t.Fatalf("resumed writer: %v, %d bytes kept, want %d", err, w.Written(), half)
	}
	other, err := s.ResumableWriter(d)
	if err != nil || other.Written() != 0 {
		t.Fatalf("a second writer at once: %v, %d bytes kept, want a fresh start", err, other.Written())
	}
	other.Abort()
	if _, err := w.Write(data[half:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(d); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Fatalf("the partial file is still there after Commit: %v", err)
	}

	// Kept bytes damaged on disk: Commit fails and removes them.
	s.RemoveObject(d)
	w, _ = s.ResumableWriter(d)
	w.Write(data[:half])
	w.Keep()
	f, err := os.OpenFile(partial, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{data[10] ^ 1}, 10)
	f.Close()
	w, _ = s.ResumableWriter(d)
	w.Write(data[half:])
	if err := w.Commit(); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Commit over damaged kept bytes: %v, want ErrDigestMismatch", err)
	}
	if ok, _ := s.Has(d); ok {
		t.Fatal("damaged bytes were stored")
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Fatalf("damaged kept bytes are still there: %v", err)
	}
}

// A store's ID is made once and survives reopening and CleanTmp, which
// removes old partial downloads.
func TestStoreID(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, KindBst1Artifact)
	if _, err := s.ID(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ID of a store not made yet: %v; want ErrNotFound", err)
	}
	if _, err := s.Add([]byte("first")); err != nil {
		t.Fatal(err)
	}
	id, err := s.ID()
	if err != nil || len(id) != 32 {
		t.Fatalf("ID = %q, %v", id, err)
	}
	w, _ := s.ResumableWriter(digest.NewFromBlob([]byte("kept")))
	w.Write([]byte("ke"))
	w.Keep()
	if n, err := s.CleanTmp(0); err != nil || n != 1 {
		t.Fatalf("CleanTmp removed %d files, %v; want the partial one", n, err)
	}
	s, _ = Open(dir, KindBst1Artifact)
	if again, err := s.ID(); again != id || err != nil {
		t.Fatalf("ID after reopening = %q, %v; want %q", again, err, id)
	}
	if other, _ := openTemp(t, KindBst1Artifact).ID(); other == id {
		t.Fatal("two stores have one ID")
	}
}

// Writers of one digest racing, one aborting while the other takes the
// partial file over: the aborting writer never removes a file another
// writer holds, so every writer that wrote the whole blob commits it.
func TestResumableWriterAbortRace(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(i * 5)
	}
	d := digest.NewFromBlob(data)
	for i := range 5000 {
		errs := make(chan error, 2)
		for _, commit := range []bool{false, true} {
			go func() {
				w, err := s.ResumableWriter(d)
				if err != nil {
					errs <- err
					return
				}
				if _, err := w.Write(data[w.Written():]); err != nil {
					errs <- err
					return
				}
				if !commit {
					w.Abort()
					errs <- nil
					return
				}
				errs <- w.Commit()
			}()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
		}
		if err := s.RemoveObject(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
}
