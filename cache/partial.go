package cache

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sys/unix"
)

// ID is a random id made once for the store and kept in its temporary
// directory (CleanTmp leaves it), for names that must differ between
// stores and stay the same from one run to the next, such as the upload
// names that let a push resume where an interrupted one stopped. A store
// not made yet (nothing written) has none: ErrNotFound, and nothing is
// created for it.
func (s *Store) ID() (string, error) {
	path := filepath.Join(s.tmp, ".id")
	if data, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(data))) == 32 {
		return strings.TrimSpace(string(data)), nil
	}
	if s.readOnly {
		return "", ErrReadOnly
	}
	if _, err := os.Stat(s.tmp); err != nil {
		return "", fmt.Errorf("store id: %w", ErrNotFound)
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(s.tmp, "id-")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(hex.EncodeToString(b[:]) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	// A link never replaces: of two processes making an id at once, the
	// first one's stays and both read it.
	if err := os.Link(f.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		os.Remove(path) // a damaged id: the next call makes another
		return "", err
	}
	data, err := os.ReadFile(path)
	return strings.TrimSpace(string(data)), err
}

// partialPrefix starts the names of kept partial downloads in the
// temporary directory; the digest follows.
const partialPrefix = "partial-"

// ResumableWriter starts writing the blob d, or goes on with what an
// interrupted writer of d kept (Keep): its bytes are hashed again, so
// every byte is still checked against the digest at Commit, and Written
// says where the data should resume. The bytes live under the store's
// temporary directory, named after the digest, never under the blob's
// final name; CleanTmp removes them once they are old. When another
// process is writing the same partial blob, this writer starts afresh in
// a file of its own.
func (s *Store) ResumableWriter(d digest.Digest) (*BlobWriter, error) {
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	if err := s.ensure(); err != nil {
		return nil, err
	}
	path := filepath.Join(s.tmp, fmt.Sprintf("%s%s-%d", partialPrefix, d.Hash, d.Size))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening partial blob: %w", err)
	}
	if !lockPartial(f, path) {
		f.Close()
		return s.newWriter(d)
	}
	w := &BlobWriter{s: s, want: d, f: f, h: sha256.New(), named: true, partial: true}
	// Touched, so that no CleanTmp takes it for a leftover while it is
	// hashed again.
	now := time.Now()
	os.Chtimes(path, now, now)
	st, err := f.Stat()
	if err != nil {
		w.Abort()
		return nil, err
	}
	if n := st.Size(); n > 0 && n <= d.Size {
		if got, err := io.Copy(w.h, io.LimitReader(f, n)); err == nil && got == n {
			w.n = n
		}
	}
	if w.n == 0 {
		w.h.Reset()
		if err := f.Truncate(0); err != nil {
			w.Abort()
			return nil, err
		}
	}
	if _, err := f.Seek(w.n, io.SeekStart); err != nil {
		w.Abort()
		return nil, err
	}
	return w, nil
}

// lockPartial takes f's lock for this writer alone, and checks that f is
// still the file at path (not one a finishing writer has just renamed
// into place).
func lockPartial(f *os.File, path string) bool {
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return false
	}
	fst, err1 := f.Stat()
	pst, err2 := os.Stat(path)
	return err1 == nil && err2 == nil && os.SameFile(fst, pst)
}

// Keep closes the writer, keeping what a ResumableWriter holds for the
// next one of the same digest; any other writer is aborted. The writer
// must not be used after.
func (w *BlobWriter) Keep() {
	if !w.partial || w.n == 0 {
		w.Abort()
		return
	}
	w.f.Close()
}
