package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sys/unix"
)

// Errors returned by the store.
var (
	// ErrNotFound: the object or ref is not in the store.
	ErrNotFound = errors.New("not found in the local store")
	// ErrDigestMismatch: data did not hash to the digest it was stored under.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrInvalidRef: a ref name that could escape the store or is malformed.
	ErrInvalidRef = errors.New("invalid ref")
	// ErrReadOnly: a write to a store opened read-only.
	ErrReadOnly = errors.New("the local store is open read-only")
	// ErrNoSpace: the store's file system cannot hold a blob.
	ErrNoSpace = errors.New("no space")
)

// Store is a local content-addressed store. It is safe for concurrent use,
// also by several processes.
type Store struct {
	root     string
	tmp      string
	readOnly bool

	// mu guards what the first write decides: the layout (KindArtifact
	// until then in a new store) and whether the directories exist.
	mu     sync.Mutex
	layout Kind
	made   bool
	// existed: the directory held a store when it was opened.
	existed bool
	// lockWanted: Lock was asked for a shared lock before the store
	// existed; the first write takes it (lockFile) once it does, waiting
	// under the context and callback Lock was given.
	lockWanted  bool
	lockCtx     context.Context
	lockWaiting func()
	lockFile    *os.File

	// index is the object index IndexObjects keeps, nil without one.
	index atomic.Pointer[objectIndex]
	// syncs shares syncs of the file system between writers of refs.
	syncs syncer
}

// Open opens the store at root for reading and writing. Nothing is
// created until something is written, so a run that writes nothing leaves
// no store behind. A directory that already holds a store keeps its own
// layout (DetectLayout); kind's layout (Kind.Layout: the configured
// format's) applies only to a new or empty directory, and KindArtifact
// leaves it to what is written first: Settle, else BuildStream 2's for a
// blob written before any ref.
func Open(root string, kind Kind) (*Store, error) {
	s, err := newStore(root, kind)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(s.tmp); err == nil {
		s.CleanTmp(staleTmp)
	}
	return s, nil
}

// staleTmp is how old a temporary file must be before an opening process
// takes it for a leftover of a killed one: a write in progress renames its
// file within moments.
const staleTmp = time.Hour

// OpenReadOnly opens the store at root without creating anything, for
// commands that only read: a directory that does not exist or holds no
// store reads as an empty store of kind's layout. Writes fail with
// ErrReadOnly.
func OpenReadOnly(root string, kind Kind) (*Store, error) {
	s, err := newStore(root, kind)
	if s != nil {
		s.readOnly = true
	}
	return s, err
}

func newStore(root string, kind Kind) (*Store, error) {
	if !kind.valid() {
		return nil, fmt.Errorf("unknown kind %q", kind)
	}
	layout := kind.Layout()
	found, ok := DetectLayout(root)
	if ok {
		layout = found
	}
	s := &Store{root: root, layout: layout, existed: ok, tmp: filepath.Join(root, "tmp")}
	if ok {
		_, err := os.Stat(s.tmp)
		s.made = err == nil
	}
	return s, nil
}

// Settle gives a store that has no layout yet the layout of kind, for
// what is about to be written (a BuildStream 1 artifact: BuildStream 1's,
// as bst-artifact-server keeps it). A store with a layout keeps it. It
// returns the store's layout.
func (s *Store) Settle(kind Kind) Kind {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.decide(kind.Layout())
	return s.layout
}

// decide gives the store its layout if it has none: that of a store
// another process has made since, else l. s.mu is held.
func (s *Store) decide(l Kind) {
	if s.layout != KindArtifact {
		return
	}
	if found, ok := DetectLayout(s.root); ok {
		l = found
	}
	s.layout = l
}

// ensure makes the store's directories before its first write, in its
// layout (BuildStream 2's when nothing settled it), and takes the shared
// lock Lock deferred.
func (s *Store) ensure() error {
	if s.readOnly {
		return ErrReadOnly
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.made && (!s.lockWanted || s.lockFile != nil) {
		return nil
	}
	if !s.made {
		if err := s.create(); err != nil {
			return fmt.Errorf("creating the local store: %w", err)
		}
	}
	if s.lockWanted && s.lockFile == nil {
		f, err := s.flock(s.lockCtx, false, s.lockWaiting)
		if err != nil {
			return err
		}
		s.lockFile = f
	}
	return nil
}

// create makes the store's directories. Processes making one new store at
// once agree on its layout: under an exclusive lock of the store's
// directory (a flock only bst-cache takes), the
// layout a store already has on disk (another process made it since this
// one was opened) wins over the one this store was opened or settled with,
// which wins over BuildStream 2's. s.mu is held.
func (s *Store) create() error {
	if err := os.MkdirAll(s.tmp, 0o755); err != nil {
		return err
	}
	f, err := os.Open(s.root)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	if found, ok := DetectLayout(s.root); ok {
		s.layout = found
	}
	s.decide(KindBst2Artifact)
	if err := os.MkdirAll(s.objectsDir(), 0o755); err != nil {
		return err
	}
	s.made = true
	if x := s.index.Load(); x != nil {
		x.created(s)
	}
	return nil
}

// objectsDir is where objects live in the store's layout.
func (s *Store) objectsDir() string {
	if s.layout == KindBst1Artifact {
		return filepath.Join(s.root, "cas", "objects")
	}
	return filepath.Join(s.root, "cas", "cas", "objects")
}

// objects is objectsDir under the lock.
func (s *Store) objects() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.objectsDir()
}

// ReadOnly says whether the store was opened read-only.
func (s *Store) ReadOnly() bool { return s.readOnly }

// Root returns the store directory.
func (s *Store) Root() string { return s.root }

// Layout returns the store's layout (see Kind.Layout): KindBst1Artifact
// or KindBst2Artifact, KindArtifact for a new store until something
// settles it.
func (s *Store) Layout() Kind {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.layout
}

// ObjectPath is where the blob with digest d lives.
func (s *Store) ObjectPath(d digest.Digest) string {
	// Concatenated, not joined: objectsDir is clean and the hash checked,
	// and lookups of many digests a call make this a hot path.
	return s.objects() + "/" + d.Hash[:2] + "/" + d.Hash[2:]
}

// checkDigest is CheckDigest.
func checkDigest(d digest.Digest) error { return CheckDigest(d) }

// Has reports whether the blob is present with the right size. Contents are
// not rehashed; Verify does that.
func (s *Store) Has(d digest.Digest) (bool, error) {
	if err := checkDigest(d); err != nil {
		return false, err
	}
	st, err := os.Stat(s.ObjectPath(d))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	return err == nil && st.Mode().IsRegular() && st.Size() == d.Size, nil
}

// Missing returns the digests of ds that the store does not have, in order,
// without duplicates.
func (s *Store) Missing(ds []digest.Digest) ([]digest.Digest, error) {
	var out []digest.Digest
	seen := make(map[digest.Digest]bool, len(ds))
	for _, d := range ds {
		if seen[d] {
			continue
		}
		seen[d] = true
		ok, err := s.Has(d)
		if err != nil {
			return nil, err
		}
		if !ok {
			out = append(out, d)
		}
	}
	return out, nil
}

// Open opens a blob for reading. A missing blob is ErrNotFound.
func (s *Store) Open(d digest.Digest) (*os.File, error) {
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	f, err := os.Open(s.ObjectPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, missingBlob{d}
	}
	return f, err
}

// missingBlob is Open's ErrNotFound, formatted only if printed: a server
// answers many a lookup of blobs it lacks.
type missingBlob struct{ d digest.Digest }

func (e missingBlob) Error() string { return "blob " + e.d.String() + ": " + ErrNotFound.Error() }
func (e missingBlob) Unwrap() error { return ErrNotFound }

// ReadBlob reads a whole blob into memory and checks it against its digest.
// Meant for small blobs such as Directory messages.
func (s *Store) ReadBlob(d digest.Digest) ([]byte, error) {
	data, err := s.readUnchecked(d)
	if err != nil {
		return nil, err
	}
	if got := digest.NewFromBlob(data); got != d {
		return nil, fmt.Errorf("blob %s in the local store: %w (its content hashes to %s)", d, ErrDigestMismatch, got)
	}
	return data, nil
}

// readUnchecked reads a whole blob without hashing it; only its size is
// checked.
func (s *Store) readUnchecked(d digest.Digest) ([]byte, error) {
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	// Not os.Open: a blob read whole is never polled, and walks of a big
	// store read hundreds of thousands (os.Open makes four system calls
	// more of each).
	p := s.ObjectPath(d)
	fd, err := ignoringEINTR(func() (int, error) { return syscall.Open(p, syscall.O_RDONLY|syscall.O_CLOEXEC, 0) })
	if errors.Is(err, fs.ErrNotExist) {
		return nil, missingBlob{d}
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	defer syscall.Close(fd)
	data, err := readUpTo(fdReader(fd), d.Size+1)
	if err != nil {
		return nil, fmt.Errorf("reading blob %s: %w", d, err)
	}
	if int64(len(data)) != d.Size {
		return nil, fmt.Errorf("blob %s in the local store: %w (%d bytes)", d, ErrDigestMismatch, len(data))
	}
	return data, nil
}

// fdReader reads a file descriptor with plain system calls.
type fdReader int

func (r fdReader) Read(p []byte) (int, error) {
	n, err := ignoringEINTR(func() (int, error) { return syscall.Read(int(r), p) })
	switch {
	case err != nil:
		return 0, err
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// ignoringEINTR retries a system call a signal interrupted.
func ignoringEINTR(call func() (int, error)) (int, error) {
	for {
		n, err := call()
		if err != syscall.EINTR {
			return n, err
		}
	}
}

// preallocated bounds the buffer readUpTo sizes from what it is told
// before it has seen the bytes.
const preallocated = 16 << 20

// readUpTo reads at most n bytes of r, into one buffer of the right size
// when r holds what it should (io.ReadAll would grow one through a dozen
// copies).
func readUpTo(r io.Reader, n int64) ([]byte, error) {
	buf := make([]byte, min(n, preallocated))
	k, err := io.ReadFull(r, buf)
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return buf[:k], nil
	case err != nil:
		return nil, err
	case int64(k) == n:
		return buf, nil
	}
	rest, err := io.ReadAll(io.LimitReader(r, n-int64(k)))
	return append(buf, rest...), err
}

// Verify rehashes a stored blob.
func (s *Store) Verify(d digest.Digest) error {
	f, err := s.Open(d)
	if err != nil {
		return err
	}
	defer f.Close()
	got, err := digest.NewFromReader(f)
	if err != nil {
		return fmt.Errorf("reading blob %s: %w", d, err)
	}
	if got != d {
		return fmt.Errorf("blob %s in the local store: %w (its content hashes to %s)", d, ErrDigestMismatch, got)
	}
	return nil
}

// Put stores the blob read from r under d. The data is hashed while it is
// written to a temporary file, and only renamed into place when it matches
// d; on any error nothing is left behind. Memory use is bounded whatever the
// blob's size. Storing a blob that is already present is cheap and safe.
func (s *Store) Put(d digest.Digest, r io.Reader) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	if ok, err := s.Has(d); err == nil && ok {
		_, err := io.Copy(io.Discard, r)
		return err
	}
	w, err := s.newWriter(d)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Abort()
		return fmt.Errorf("writing blob %s: %w", d, err)
	}
	return w.Commit()
}

// PutBytes stores a blob held in memory.
func (s *Store) PutBytes(d digest.Digest, data []byte) error {
	return s.Put(d, bytes.NewReader(data))
}

// PutVerified stores a blob held in memory, in pieces (the frames a
// download came in) to be written one after the other, that the caller
// has already checked against d (remotes.BatchReadEach does, and a digest
// computed from the data is right by construction). Only the size is
// checked again: hashing the same bytes twice costs a pull as much as the
// network does. It does not ask first whether the blob is present, as its
// callers just did: one that is (another writer's) is found when the new
// file is linked, and left as it is.
func (s *Store) PutVerified(d digest.Digest, data ...[]byte) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	var size int64
	for _, p := range data {
		size += int64(len(p))
	}
	if size != d.Size {
		return fmt.Errorf("blob %s: %w: %d bytes", d, ErrDigestMismatch, size)
	}
	if err := s.ensure(); err != nil {
		return err
	}
	fd, err := s.openUnnamed()
	if err != nil {
		// No O_TMPFILE here: a named temporary file.
		w, err := s.newWriter(d)
		if err != nil {
			return err
		}
		for _, p := range data {
			if _, err := w.f.Write(p); err != nil {
				w.Abort()
				return fmt.Errorf("writing blob %s: %w", d, err)
			}
		}
		w.n = d.Size
		w.trusted = true
		return w.Commit()
	}
	// A plain descriptor and system calls, no *os.File: the small blobs
	// of a pull come this way, one file each.
	defer unix.Close(fd)
	if err := writePieces(fd, data); err != nil {
		return fmt.Errorf("writing blob %s: %w", d, err)
	}
	if umask&0o644 != 0 {
		if err := unix.Fchmod(fd, 0o644); err != nil {
			return fmt.Errorf("writing blob %s: %w", d, err)
		}
	}
	return s.link(fd, s.ObjectPath(d), d.Size)
}

// maxPieces is the most pieces one writev takes (Linux's IOV_MAX).
const maxPieces = 1024

// writePieces writes data's pieces to fd one after the other, with one
// system call for as many as it takes (writev).
func writePieces(fd int, data [][]byte) error {
	for {
		for len(data) > 0 && len(data[0]) == 0 {
			data = data[1:]
		}
		if len(data) == 0 {
			return nil
		}
		n, err := ignoringEINTR(func() (int, error) { return unix.Writev(fd, data[:min(len(data), maxPieces)]) })
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		for len(data) > 0 && n >= len(data[0]) {
			n -= len(data[0])
			data = data[1:]
		}
		if n > 0 && len(data) > 0 {
			// Written in part: the rest of the piece, in a list of
			// its own (data is the caller's).
			data = append([][]byte{data[0][n:]}, data[1:]...)
		}
	}
}

// Add stores a blob from memory and returns its digest.
func (s *Store) Add(data []byte) (digest.Digest, error) {
	d := digest.NewFromBlob(data)
	return d, s.PutBytes(d, data)
}

// BlobWriter writes one blob into the store: Write any number of times, then
// Commit or Abort exactly once.
type BlobWriter struct {
	s    *Store
	want digest.Digest
	f    *os.File
	h    hash.Hash
	n    int64
	// named: f has a name in the temporary directory (no O_TMPFILE).
	named bool
	// trusted: the caller verified the data (PutVerified); h is unused.
	trusted bool
	// partial: f is a ResumableWriter's, named after the digest.
	partial bool
	// readable: f was created 0644 already (the umask took nothing off).
	readable bool
}

// umask is the process's, read once at start: Umask can only be read by
// setting it, which is safe before any file is created.
var umask = func() int {
	u := unix.Umask(0)
	unix.Umask(u)
	return u
}()

// NewWriter starts writing the blob d, for callers that receive it in pieces.
func (s *Store) NewWriter(d digest.Digest) (*BlobWriter, error) {
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	return s.newWriter(d)
}

func (s *Store) newWriter(d digest.Digest) (*BlobWriter, error) {
	if err := s.ensure(); err != nil {
		return nil, err
	}
	if fd, err := s.openUnnamed(); err == nil {
		return &BlobWriter{s: s, want: d, f: os.NewFile(uintptr(fd), s.tmp), h: sha256.New(), readable: umask&0o644 == 0}, nil
	}
	f, err := os.CreateTemp(s.tmp, "obj-")
	if err != nil {
		return nil, fmt.Errorf("creating temporary object: %w", err)
	}
	return &BlobWriter{s: s, want: d, f: f, h: sha256.New(), named: true}, nil
}

// openUnnamed opens a new unnamed file (O_TMPFILE) in the temporary
// directory, to be linked into place once verified: one directory
// operation instead of create and rename, and a writer that dies leaves
// nothing behind. It fails on file systems without O_TMPFILE; those get
// a named temporary file. Not os.OpenFile, which tries to make every file
// pollable: that costs a regular file six system calls more, and a pull
// writes one file per object.
func (s *Store) openUnnamed() (int, error) {
	return ignoringEINTR(func() (int, error) {
		return unix.Open(s.tmp, unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o644)
	})
}

// Write appends data. Writing past the digest's size fails at once.
func (w *BlobWriter) Write(p []byte) (int, error) {
	if w.n+int64(len(p)) > w.want.Size {
		return 0, fmt.Errorf("blob %s: %w: more than %d bytes", w.want, ErrDigestMismatch, w.want.Size)
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Written is how many bytes were written so far.
func (w *BlobWriter) Written() int64 { return w.n }

// Parked is a blob write put aside: its bytes in a named temporary file,
// no file descriptor held, its hash state kept, so that ResumeWriter can go
// on where it stopped.
type Parked struct {
	want  digest.Digest
	path  string
	n     int64
	state []byte
}

// Written is how many bytes the parked write holds.
func (p Parked) Written() int64 { return p.n }

// Park closes the writer's file, keeping what was written under a name in
// the store's temporary directory. The writer must not be used after.
func (w *BlobWriter) Park() (Parked, error) {
	state, err := w.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		w.Abort()
		return Parked{}, err
	}
	p := Parked{want: w.want, n: w.n, state: state, path: w.f.Name()}
	if !w.named {
		tmp, err := os.CreateTemp(w.s.tmp, "upload-")
		if err != nil {
			w.Abort()
			return Parked{}, err
		}
		p.path = tmp.Name()
		tmp.Close()
		os.Remove(p.path)
		src := "/proc/self/fd/" + strconv.Itoa(int(w.f.Fd()))
		if err := unix.Linkat(unix.AT_FDCWD, src, unix.AT_FDCWD, p.path, unix.AT_SYMLINK_FOLLOW); err != nil {
			w.Abort()
			return Parked{}, fmt.Errorf("parking an upload: %w", err)
		}
	}
	if err := w.f.Close(); err != nil {
		os.Remove(p.path)
		return Parked{}, err
	}
	return p, nil
}

// ResumeWriter reopens a parked write at the byte it stopped at.
func (s *Store) ResumeWriter(p Parked) (*BlobWriter, error) {
	f, err := os.OpenFile(p.path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("resuming an upload: %w", err)
	}
	if _, err := f.Seek(p.n, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(p.state); err != nil {
		f.Close()
		return nil, err
	}
	return &BlobWriter{s: s, want: p.want, f: f, h: h, n: p.n, named: true}, nil
}

// Discard removes a parked write's bytes.
func (p Parked) Discard() { os.Remove(p.path) }

// Abort discards what was written.
func (w *BlobWriter) Abort() {
	if w.partial {
		// Removed while still locked: once closed, another writer may
		// take the file over, and must not lose it.
		os.Remove(w.f.Name())
		w.f.Close()
		return
	}
	w.f.Close()
	if w.named {
		os.Remove(w.f.Name())
	}
}

// Commit checks the data against the digest and renames it into place.
func (w *BlobWriter) Commit() (err error) {
	defer func() {
		if err != nil {
			w.Abort()
		}
	}()
	if w.n != w.want.Size {
		return fmt.Errorf("blob %s: %w: received %d bytes", w.want, ErrDigestMismatch, w.n)
	}
	if !w.trusted {
		if got := hex.EncodeToString(w.h.Sum(nil)); got != w.want.Hash {
			return fmt.Errorf("blob %s: %w: received %d bytes hashing to %s", w.want, ErrDigestMismatch, w.n, got)
		}
	}
	// BuildStream checks out objects by hard link: keep them world-readable.
	if !w.readable {
		if err := w.f.Chmod(0o644); err != nil {
			return err
		}
	}
	// Objects are not synced one by one: SetRefs syncs the file system
	// before it writes refs, which makes every object they name durable
	// first, at the cost of a syncfs shared by the refs written at once
	// rather than an fsync per object.
	if w.partial {
		// Renamed while still locked, so no other writer takes the
		// finished file for a partial one of its own.
		err := w.s.install(w.f.Name(), w.s.ObjectPath(w.want))
		w.f.Close()
		return err
	}
	if w.named {
		if err := w.f.Close(); err != nil {
			return err
		}
		return w.s.install(w.f.Name(), w.s.ObjectPath(w.want))
	}
	defer w.f.Close()
	return w.s.link(int(w.f.Fd()), w.s.ObjectPath(w.want), w.want.Size)
}

// link gives the unnamed file open as fd its final name. An object
// already there is the same content (its name is its hash), so that is
// success.
func (s *Store) link(fd int, final string, size int64) error {
	err := linkFD(fd, final)
	if errors.Is(err, fs.ErrNotExist) {
		if err := makeDir(filepath.Dir(final)); err != nil {
			return err
		}
		err = linkFD(fd, final)
	}
	if errors.Is(err, fs.ErrExist) {
		if st, serr := os.Lstat(final); serr == nil && st.Mode().IsRegular() && st.Size() == size {
			return nil // another writer put the same content there
		}
		// A damaged object (truncated, or not a file): the verified one
		// replaces it, through a name of its own and a rename.
		side := fmt.Sprintf("%s.repair-%d", final, os.Getpid())
		os.Remove(side)
		if err = linkFD(fd, side); err == nil {
			if err = os.Rename(side, final); err != nil {
				os.Remove(side)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("installing %s: %w", final, err)
	}
	return nil
}

// flink says whether linkat's AT_EMPTY_PATH links an open file here: 1
// it does, -1 it does not (Linux before 6.10 allows it only with
// CAP_DAC_READ_SEARCH), 0 not known yet.
var flink atomic.Int32

// linkFD links the file open as fd at path: by the descriptor itself
// (AT_EMPTY_PATH) where this process may, else through /proc/self/fd,
// which costs a lookup of /proc's entries for every object.
func linkFD(fd int, path string) error {
	if flink.Load() >= 0 {
		err := unix.Linkat(fd, "", unix.AT_FDCWD, path, unix.AT_EMPTY_PATH)
		switch {
		case err == nil:
			flink.Store(1)
			return nil
		case flink.Load() == 1 || !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EINVAL):
			return err
		}
		// Not allowed, or the directory is missing: /proc tells which.
	}
	err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW)
	if err == nil {
		flink.CompareAndSwap(0, -1)
	}
	return err
}

// install renames a finished temporary file to its final path, creating the
// directory. Not os.Rename, which looks the final path up first to refuse
// a directory there (rename(2) refuses to put a file over one): a pull
// renames two refs an artifact.
func (s *Store) install(tmp, final string) error {
	err := unix.Rename(tmp, final)
	if errors.Is(err, fs.ErrNotExist) {
		if err := makeDir(filepath.Dir(final)); err != nil {
			return err
		}
		err = unix.Rename(tmp, final)
	}
	if err != nil {
		return fmt.Errorf("installing %s: %w", final, &os.LinkError{Op: "rename", Old: tmp, New: final, Err: err})
	}
	return nil
}

// makeDir makes the directory dir, and its parents that are missing: a
// fan-out directory or a ref's directory is made with one mkdir where
// its parent exists (os.MkdirAll looks both up first).
func makeDir(dir string) error {
	err := unix.Mkdir(dir, 0o755)
	switch {
	case err == nil, errors.Is(err, fs.ErrExist):
		return nil // what is there, if not a directory, fails the caller's next call
	case errors.Is(err, fs.ErrNotExist):
		return os.MkdirAll(dir, 0o755)
	}
	return &fs.PathError{Op: "mkdir", Path: dir, Err: err}
}

// ObjectInfo describes a blob found by WalkObjects.
type ObjectInfo struct {
	Digest   digest.Digest
	Modified time.Time
}

// objectWalkers is how many fan-out directories WalkObjects reads at a
// time, ahead of its caller.
const objectWalkers = 4

// WalkObjects calls fn for every object in the store, in no particular
// order, from one goroutine at a time. Files whose names are not object
// names are skipped.
func (s *Store) WalkObjects(fn func(ObjectInfo) error) error {
	return walkObjects(s.objects(), nil, func(o ObjectInfo, _ uint64) error { return fn(o) })
}

// WalkObjectsFrom calls fn with the objects whose hashes begin with the
// byte from or a greater one, a fan-out directory (the objects of one
// first byte, in no particular order) a call, in order of their first
// bytes, from one goroutine at a time, until enough says so after one: it
// returns where the next walk begins (the first byte not walked), 256 once
// every one was. Walks from 0 to 256 meet every object once, as one
// WalkObjects would, with a part of them at a time. A caller keeping what
// it is given learns each directory's size before it allocates (du and gc
// size their tables exactly). fn may keep the slice.
func (s *Store) WalkObjectsFrom(from int, enough func() bool, fn func(fan []ObjectInfo) error) (next int, err error) {
	objects := s.objects()
	fans, err := os.ReadDir(objects)
	if errors.Is(err, fs.ErrNotExist) {
		return 256, nil
	}
	if err != nil {
		return 0, err
	}
	// Fan-out directories are two hex digits; anything else holds no
	// object names.
	fans = slices.DeleteFunc(fans, func(f fs.DirEntry) bool {
		b, ok := fanByte(f.Name())
		return !ok || b < from
	})
	next = 256
	err = walkFans(objects, fans, nil, func(objs []ObjectInfo, _ uint64) error { return fn(objs) }, func(i int) bool {
		if i+1 < len(fans) && enough() {
			next, _ = fanByte(fans[i+1].Name())
			return true
		}
		return false
	})
	return next, err
}

// fanByte is the first byte of the hashes a fan-out directory named name
// holds.
func fanByte(name string) (int, bool) {
	var b [1]byte
	if len(name) != 2 || !lowerHex[name[0]] || !lowerHex[name[1]] {
		return 0, false
	}
	hex.Decode(b[:], []byte(name))
	return int(b[0]), true
}

// walkObjects is WalkObjects of the objects directory objects. With
// listing, each fan-out directory's listing(fan) is taken just before it is
// read and passed on with its objects.
func walkObjects(objects string, listing func(fan string) uint64, fn func(o ObjectInfo, listed uint64) error) error {
	fans, err := os.ReadDir(objects)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return walkFans(objects, fans, listing, func(objs []ObjectInfo, listed uint64) error {
		for _, o := range objs {
			if err := fn(o, listed); err != nil {
				return err
			}
		}
		return nil
	}, func(int) bool { return false })
}

// walkFans calls fn with the objects of each of the fan-out directories
// fans, in their order, objectWalkers read ahead, until stop(i) says to
// stop after fans[i]. With listing, each directory's listing(fan) is taken
// just before it is read and passed on with its objects.
func walkFans(objects string, fans []fs.DirEntry, listing func(fan string) uint64, fn func(objs []ObjectInfo, listed uint64) error, stop func(i int) bool) error {
	type fanOut struct {
		objects []ObjectInfo
		listed  uint64
		err     error
	}
	found := make([]chan fanOut, len(fans))
	for i := range found {
		found[i] = make(chan fanOut, 1)
	}
	running := make(chan struct{}, objectWalkers)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for i, f := range fans {
			select {
			case running <- struct{}{}:
			case <-done:
				return
			}
			go func() {
				var r fanOut
				if f.IsDir() {
					if listing != nil {
						r.listed = listing(f.Name())
					}
					r.objects, r.err = readFanOut(objects, f.Name())
				}
				found[i] <- r
			}()
		}
	}()
	for i := range fans {
		r := <-found[i]
		<-running
		if r.err != nil {
			return r.err
		}
		if len(r.objects) > 0 {
			if err := fn(r.objects, r.listed); err != nil {
				return err
			}
		}
		if stop(i) {
			return nil
		}
	}
	return nil
}

// readFanOut lists the objects in one fan-out directory (named by their
// hashes' first two digits): each looked up from the directory, not
// from the root (a big store has a million).
func readFanOut(objects, fan string) ([]ObjectInfo, error) {
	dir, err := os.Open(filepath.Join(objects, fan))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // removed while we walked
	}
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	entries, err := dir.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	fd := int(dir.Fd())
	out := make([]ObjectInfo, 0, len(entries))
	for _, e := range entries {
		hash := fan + e.Name()
		if !e.Type().IsRegular() || !validHash(hash) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, e.Name(), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue // removed while we walked
		}
		out = append(out, ObjectInfo{
			Digest:   digest.Digest{Hash: hash, Size: st.Size},
			Modified: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		})
	}
	return out, nil
}

// RemoveObject deletes a blob; a missing blob is not an error. Callers make
// sure no live ref needs it.
func (s *Store) RemoveObject(d digest.Digest) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	if x := s.index.Load(); x != nil {
		// Out of the index first: between the two, the object reads as
		// absent, which costs an upload at most.
		x.remove(d)
	}
	if err := os.Remove(s.ObjectPath(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Touch marks a blob as used now, for least-recently-used eviction.
func (s *Store) Touch(d digest.Digest) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	now := time.Now()
	return os.Chtimes(s.ObjectPath(d), now, now)
}

// TouchRef marks a ref as read now: its access time moves, its
// modification time (when it was written) stays.
func (s *Store) TouchRef(kind Kind, ref string) error {
	p, err := s.RefPath(kind, ref)
	if err != nil {
		return err
	}
	return os.Chtimes(p, time.Now(), time.Time{})
}

// DetectLayout tells the layout of an existing store directory (see
// Kind.Layout): KindBst2Artifact when it has BuildStream 2's
// cas/cas/objects, KindBst1Artifact when it has cas/objects or cas/refs
// (BuildStream 1's cache or bst-artifact-server's repository). ok is
// false, and layout KindArtifact, when the directory holds neither.
func DetectLayout(root string) (layout Kind, ok bool) {
	exists := func(p ...string) bool {
		_, err := os.Stat(filepath.Join(append([]string{root}, p...)...))
		return err == nil
	}
	switch {
	case exists("cas", "cas", "objects"):
		return KindBst2Artifact, true
	case exists("cas", "objects"), exists("cas", "refs"):
		return KindBst1Artifact, true
	}
	return KindArtifact, false
}

// Room checks that the store's file system has n bytes free for a blob
// about to be written, so a huge digest fails at once instead of filling
// the disk.
func (s *Store) Room(n int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(s.root, &st); err != nil {
		return nil // cannot tell: the write itself reports ENOSPC
	}
	if free := int64(st.Bavail) * int64(st.Bsize); n > free {
		return fmt.Errorf("%w: %d bytes needed, %d free on %s", ErrNoSpace, n, free, s.root)
	}
	return nil
}
