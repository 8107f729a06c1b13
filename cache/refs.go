package cache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// ValidateRef checks that a ref is a relative path of plain components:
// not empty, not absolute, no "." or ".." or empty components, no NUL or
// backslash, no trailing slash.
func ValidateRef(ref string) error {
	switch {
	case ref == "":
		return fmt.Errorf("%w: empty", ErrInvalidRef)
	case strings.HasPrefix(ref, "/"):
		return fmt.Errorf("%w %q: absolute path", ErrInvalidRef, ref)
	case strings.ContainsAny(ref, "\x00\\"):
		return fmt.Errorf("%w %q: contains NUL or backslash", ErrInvalidRef, ref)
	case strings.IndexFunc(ref, func(r rune) bool { return r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 || r == utf8.RuneError }) >= 0:
		return fmt.Errorf("%w %q: contains a control character or invalid UTF-8", ErrInvalidRef, ref)
	case len(ref) > 4096:
		return fmt.Errorf("%w: longer than 4096 bytes", ErrInvalidRef)
	}
	for _, part := range strings.Split(ref, "/") {
		switch part {
		case "":
			return fmt.Errorf("%w %q: empty path component", ErrInvalidRef, ref)
		case ".", "..":
			return fmt.Errorf("%w %q: %q component", ErrInvalidRef, ref, part)
		}
	}
	return nil
}

// RefKind is the namespace a kind of ref is kept in: KindArtifact is
// BuildStream 1's or 2's artifacts by the store's layout.
func (s *Store) RefKind(kind Kind) Kind {
	if kind == KindArtifact {
		if s.Layout() == KindBst1Artifact {
			return KindBst1Artifact
		}
		return KindBst2Artifact
	}
	return kind
}

// refDir is the directory holding refs of a kind.
func (s *Store) refDir(kind Kind) (string, error) {
	switch s.RefKind(kind) {
	case KindBst1Artifact:
		return filepath.Join(s.root, "cas", "refs", "heads"), nil
	case KindBst2Artifact:
		return filepath.Join(s.root, "artifacts", "refs"), nil
	case KindSource:
		return filepath.Join(s.root, "source_protos"), nil
	case KindAsset:
		return filepath.Join(s.root, "assets"), nil
	}
	return "", fmt.Errorf("unknown ref kind %q", kind)
}

// RefPath is the file that holds a ref.
func (s *Store) RefPath(kind Kind, ref string) (string, error) {
	if err := ValidateRef(ref); err != nil {
		return "", err
	}
	dir, err := s.refDir(kind)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.FromSlash(ref)), nil
}

// GetRef returns a ref's content; a missing ref is ErrNotFound.
func (s *Store) GetRef(kind Kind, ref string) ([]byte, error) {
	data, _, err := s.ReadRef(kind, ref)
	return data, err
}

// maxRefSize bounds what a ref file may hold: refs are a Digest or an
// Artifact message of digests and names.
const maxRefSize = 16 << 20

// ReadRef returns a ref's content and what GetRef and RefInfo say of it,
// from one open of its file (listings read many); a missing ref is
// ErrNotFound.
func (s *Store) ReadRef(kind Kind, ref string) ([]byte, RefInfo, error) {
	p, err := s.RefPath(kind, ref)
	if err != nil {
		return nil, RefInfo{}, err
	}
	data, r, err := readRefAt(unix.AT_FDCWD, p, ref)
	if err != nil {
		return nil, RefInfo{}, err
	}
	r.Kind = s.RefKind(kind)
	return data, r, nil
}

// readRefAt reads the ref file at name (relative to the directory dirfd)
// as ReadRef does, without its Kind. Not os.ReadFile: a ref file is never
// polled, and the fewer system calls the better when a listing reads
// thousands.
func readRefAt(dirfd int, name, ref string) ([]byte, RefInfo, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return nil, RefInfo{}, fmt.Errorf("ref %s: %w", ref, ErrNotFound)
	}
	if err != nil {
		return nil, RefInfo{}, fmt.Errorf("reading ref %s: %w", ref, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, RefInfo{}, fmt.Errorf("reading ref %s: %w", ref, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		// A ref that is a directory of other refs is not itself a ref.
		return nil, RefInfo{}, fmt.Errorf("ref %s: %w", ref, ErrNotFound)
	}
	if st.Size > maxRefSize {
		return nil, RefInfo{}, fmt.Errorf("reading ref %s: %d bytes, more than a ref holds", ref, st.Size)
	}
	data := make([]byte, st.Size)
	for n := 0; n < len(data); {
		m, err := unix.Read(fd, data[n:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return nil, RefInfo{}, fmt.Errorf("reading ref %s: %w", ref, err)
		case m == 0:
			return nil, RefInfo{}, fmt.Errorf("reading ref %s: %w", ref, io.ErrUnexpectedEOF)
		}
		n += m
	}
	return data, newRefInfo(ref, st.Size, time.Unix(st.Mtim.Unix()), time.Unix(st.Atim.Unix())), nil
}

// SetRef writes a ref atomically and durably. Callers write a ref only once
// everything it names is in the store; SetRef syncs the file system before
// the ref gets its name, so those objects are on disk before the ref that
// names them.
func (s *Store) SetRef(kind Kind, ref string, data []byte) error {
	return s.SetRefs(kind, []string{ref}, data)
}

// SetRefs writes refs that name the same content, each as SetRef does
// (an artifact's strong and weak refs): each ref is written to a
// temporary file, a sync of the file system makes those and every object
// they name durable, and only then is each renamed into place; each
// directory a ref was renamed into is synced before SetRefs returns.
// Calls at once share the sync of the file system (Sync): the refs of
// artifacts finishing together wait for one. A ref that could not be
// renamed fails the call and is left as it was, as is every ref after it,
// and no temporary file is left.
func (s *Store) SetRefs(kind Kind, refs []string, data []byte) error {
	if len(refs) == 0 {
		return nil
	}
	return s.WriteRefs([]RefWrite{{Kind: kind, Refs: refs, Data: data}})[0]
}

// RefWrite is refs that name the same content, for WriteRefs.
type RefWrite struct {
	Kind Kind
	Refs []string
	Data []byte
}

// WriteRefs makes several writes, each as SetRefs makes one, with one
// sync of the file system for all of them (a pull's artifacts finishing
// close together): every write's temporary files are written, the file
// system is synced once, and then each write's refs are renamed into
// place and their directories synced. It returns each write's error, in
// order, nil for those written; one write failing leaves the others be.
func (s *Store) WriteRefs(ws []RefWrite) []error {
	errs := make([]error, len(ws))
	if err := s.ensure(); err != nil {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	paths := make([][]string, len(ws))
	tmps := make([][]string, len(ws))
	defer func() {
		for _, ts := range tmps {
			for _, t := range ts {
				os.Remove(t) // those not renamed
			}
		}
	}()
	ready := false
	for i, w := range ws {
		paths[i], tmps[i], errs[i] = s.refTemps(w)
		ready = ready || errs[i] == nil
	}
	if !ready {
		return errs
	}
	if err := s.Sync(); err != nil {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	// The directories, not the file system again: a sync of the file
	// system costs what every process sharing it left unsynced.
	dirs := map[string][]int{} // the writes that renamed into each
	var order []string
	for i, w := range ws {
		for j := 0; errs[i] == nil && j < len(w.Refs); j++ {
			if err := s.install(tmps[i][0], paths[i][j]); err != nil {
				errs[i] = fmt.Errorf("writing ref %s: %w", w.Refs[j], err)
				break
			}
			tmps[i] = tmps[i][1:]
			dir := filepath.Dir(paths[i][j])
			if _, ok := dirs[dir]; !ok {
				order = append(order, dir)
			}
			if n := dirs[dir]; len(n) == 0 || n[len(n)-1] != i {
				dirs[dir] = append(n, i)
			}
		}
	}
	for _, dir := range order {
		if err := syncDir(dir); err != nil {
			for _, i := range dirs[dir] {
				if errs[i] == nil {
					errs[i] = err
				}
			}
		}
	}
	return errs
}

// refTemps checks w's refs and writes a temporary file of its data for
// each, returning the refs' paths and the files' names. Each ref is a file
// of its own, not a link to another's: whoever writes one in place (a
// script, a test, another tool) changes that ref alone.
func (s *Store) refTemps(w RefWrite) (paths, tmps []string, err error) {
	paths = make([]string, len(w.Refs))
	for i, ref := range w.Refs {
		if paths[i], err = s.RefPath(w.Kind, ref); err != nil {
			return nil, nil, err
		}
	}
	for _, ref := range w.Refs {
		t, err := s.writeRefTemp(w.Data)
		if err != nil {
			for _, t := range tmps {
				os.Remove(t)
			}
			return nil, nil, fmt.Errorf("writing ref %s: %w", ref, err)
		}
		tmps = append(tmps, t)
	}
	return paths, tmps, nil
}

// writeRefTemp writes data to a new temporary file, not synced, and
// returns its name. Plain system calls, no *os.File (which tries to make
// every file pollable, four system calls more) and no chmod unless the
// umask took bits off: a pull writes two refs an artifact.
func (s *Store) writeRefTemp(data []byte) (name string, err error) {
	fd := -1
	for range 100 {
		name = s.tmp + "/ref-" + strconv.FormatUint(rand.Uint64(), 36)
		fd, err = ignoringEINTR(func() (int, error) {
			return unix.Open(name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
		})
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return "", &fs.PathError{Op: "create", Path: name, Err: err}
	}
	defer func() {
		if cerr := unix.Close(fd); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(name)
			name = ""
		}
	}()
	if err := writePieces(fd, [][]byte{data}); err != nil {
		return "", err
	}
	if umask&0o644 != 0 {
		if err := unix.Fchmod(fd, 0o644); err != nil {
			return "", err
		}
	}
	return name, nil
}

// DeleteRef removes a ref; removing a missing ref is ErrNotFound.
func (s *Store) DeleteRef(kind Kind, ref string) error {
	p, err := s.RefPath(kind, ref)
	if err != nil {
		return err
	}
	if err := os.Remove(p); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("ref %s: %w", ref, ErrNotFound)
	} else if err != nil {
		return err
	}
	return nil
}

// RefInfo describes a local ref.
type RefInfo struct {
	Name string
	// Kind is where the ref is kept: never KindArtifact.
	Kind     Kind
	Size     int64
	Modified time.Time
	Accessed time.Time
}

// ListRefs returns the refs of a kind whose names match pattern (all refs
// when pattern is empty), sorted by name; for KindArtifact, the artifacts
// of both BuildStreams, whatever the store's layout. In patterns, '*'
// matches any run of characters including '/', '?' one character, and
// [...] a class. Only the directory of the pattern's literal leading
// components is walked.
func (s *Store) ListRefs(kind Kind, pattern string) ([]RefInfo, error) {
	var refs []RefInfo
	if err := s.WalkRefs(kind, pattern, func(r RefInfo) error {
		refs = append(refs, r)
		return nil
	}); err != nil {
		return nil, err
	}
	return refs, nil
}

// WalkRefs calls fn with each ref ListRefs lists, in its order, without
// holding them all.
func (s *Store) WalkRefs(kind Kind, pattern string, fn func(RefInfo) error) error {
	c, err := s.MatchRefs(kind, pattern)
	if err != nil {
		return err
	}
	for c.Next() {
		p, err := s.RefPath(c.Kind(), c.Name())
		if err != nil {
			return err
		}
		info, err := os.Lstat(p)
		if err != nil {
			continue // removed while we walked
		}
		r := refInfo(c.Name(), info)
		r.Kind = c.Kind()
		if err := fn(r); err != nil {
			return err
		}
	}
	return c.Err()
}

// MatchRefs starts a walk of the refs of a kind whose names match a
// pattern (as ListRefs reads it; "": all), in name order: only the
// directory of the pattern's literal leading components is walked.
func (s *Store) MatchRefs(kind Kind, pattern string, opts ...RefsOption) (*RefCursor, error) {
	if pattern == "" {
		return s.Refs(kind, "", "", opts...), nil
	}
	match, err := CompileGlob(pattern)
	if err != nil {
		return nil, err
	}
	return s.Refs(kind, GlobDir(pattern), "", append(opts, func(w *kindWalk) { w.match = match })...), nil
}

// GlobDir is the literal leading directory of a ref glob: "a/b" for
// "a/b/c*", "" for "a*".
func GlobDir(pattern string) string {
	lit := pattern[:strings.IndexAny(pattern+"*", "*?[")]
	return strings.TrimSuffix(lit[:strings.LastIndex(lit, "/")+1], "/")
}

// CompileGlob turns a ref glob into an anchored regular expression.
func CompileGlob(pattern string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; c {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		case '[':
			end := strings.IndexByte(pattern[i+1:], ']')
			if end < 0 {
				return nil, fmt.Errorf("bad pattern %q: unclosed [", pattern)
			}
			class := pattern[i+1 : i+1+end]
			if strings.HasPrefix(class, "!") {
				class = "^" + class[1:]
			}
			b.WriteString("[" + strings.ReplaceAll(class, `\`, `\\`) + "]")
			i += end + 1
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	if err != nil {
		return nil, fmt.Errorf("bad pattern %q: %v", pattern, err)
	}
	return re, nil
}

// RefInfo describes one ref: Modified is when it was written, Accessed
// when it was last read (as TouchRef records it).
func (s *Store) RefInfo(kind Kind, ref string) (RefInfo, error) {
	p, err := s.RefPath(kind, ref)
	if err != nil {
		return RefInfo{}, err
	}
	info, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return RefInfo{}, fmt.Errorf("ref %s: %w", ref, ErrNotFound)
	} else if err != nil {
		return RefInfo{}, err
	}
	r := refInfo(ref, info)
	r.Kind = s.RefKind(kind)
	return r, nil
}

// refInfo fills a RefInfo from a file's metadata.
func refInfo(name string, info fs.FileInfo) RefInfo {
	accessed := info.ModTime()
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		accessed = time.Unix(st.Atim.Sec, st.Atim.Nsec)
	}
	return newRefInfo(name, info.Size(), info.ModTime(), accessed)
}

// newRefInfo is a RefInfo of a file written at modified and read at
// accessed: it was accessed when last read or written, whichever came
// last.
func newRefInfo(name string, size int64, modified, accessed time.Time) RefInfo {
	if accessed.Before(modified) {
		accessed = modified
	}
	return RefInfo{Name: name, Size: size, Modified: modified, Accessed: accessed}
}
