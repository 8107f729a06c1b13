package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// RefCursor walks refs in name order (byte order of the whole name, as
// sort.Strings has it), reading their directories as it comes to them: a
// walk that stops after n refs has read the directories on the way to
// them, and a few beyond (readAhead of them, walkReaders at once, so a
// walk of a big store uses more than one core), not every ref. Use it as
// a bufio.Scanner:
//
//	c := s.Refs(KindArtifact, "", "")
//	for c.Next() { use(c.Name(), c.Kind()) }
//	if err := c.Err(); err != nil { … }
//
// Each directory is read once, so a ref that stays throughout a walk is
// named exactly once; one written or removed meanwhile may or may not be.
// A cursor may be kept and resumed later (serve does, between listing
// pages), and dropped at any point: its readers end once the reads queued
// are done, and the directories it holds open (one a level, while their
// subdirectories are read) are closed when it is collected. It is not
// safe for concurrent use.
type RefCursor struct {
	walks []*kindWalk
	cur   *kindWalk
	err   error
}

// RefsOption changes what a walk of refs reads.
type RefsOption func(*kindWalk)

// WithRefData has the walk read each ref as it lists it (Data): its
// content and what RefInfo says of it, opened from the directory it was
// listed from, which costs less than a ReadRef of each (no path looked up
// again) and is done by the walk's readers. The default is names only.
func WithRefData() RefsOption {
	return func(w *kindWalk) { w.data = true }
}

// Directories ahead of the walk are read in the background: those of the
// next readAhead entries of the directory it is in, walkReaders at once.
const (
	readAhead   = 256
	walkReaders = 4
)

// kindWalk walks one kind's ref directory.
type kindWalk struct {
	kind  Kind
	dir   string
	after string
	data  bool
	// match, when set, is what the names of the refs walked match.
	match *regexp.Regexp
	// queue holds the directory reads started and not yet taken by one
	// of the walk's readers (at most walkReaders goroutines, which end
	// when it is empty: a walk dropped halfway leaves nothing behind).
	mu      sync.Mutex
	queue   []*dirRead
	readers int
	stack   []refFrame
	// head is the next ref, read ahead to merge kinds in order.
	head     refEntry
	headName string
	hasHead  bool
}

// refFrame is a directory the walk is in.
type refFrame struct {
	// rel is the directory's path under the kind's ref directory: "" or
	// ending in "/".
	rel string
	// entries are those still to walk, in order; the reads of the
	// subdirectories among the first started of them are under way.
	entries []refEntry
	started int
	// dir is the directory, open while its subdirectories are read
	// (opened from it: no path looked up again); nil in the first
	// frame, whose subdirectories are opened by their whole path.
	dir *os.File
}

// refEntry is one entry of a directory the walk goes into.
type refEntry struct {
	// key is its name, with a trailing "/" for a subdirectory, which
	// puts each directory's refs where their full names sort.
	key string
	// sub is a subdirectory's read, once started.
	sub *dirRead
	// ref is a ref's file, read WithRefData.
	ref *refRead
}

// refRead is what a walk WithRefData read of a ref: its content and
// RefInfo, or why they could not be read.
type refRead struct {
	data []byte
	info RefInfo
	err  error
}

// dirRead is the read of one directory, done when done is closed.
type dirRead struct {
	// parent, rel: what to read (readDir).
	parent  *os.File
	rel     string
	done    chan struct{}
	entries []refEntry
	err     error
	// dir is the directory, kept open when it has subdirectories.
	dir *os.File
}

// Refs starts a walk of the refs of a kind (for KindArtifact, those of
// both BuildStreams, merged in name order; a name held in both comes
// twice, BuildStream 1's first) named after `after` ("": from the first)
// and under prefix ("": all; "a/b": the ref a/b and those under a/b/).
func (s *Store) Refs(kind Kind, prefix, after string, opts ...RefsOption) *RefCursor {
	c := &RefCursor{}
	prefix = strings.Trim(prefix, "/")
	for _, k := range kind.Kinds() {
		dir, err := s.refDir(k)
		if err != nil {
			c.err = err
			return c
		}
		w := &kindWalk{kind: k, dir: dir, after: after}
		for _, o := range opts {
			o(w)
		}
		if prefix == "" {
			w.stack = []refFrame{{entries: []refEntry{{key: ""}}}}
		} else if err := w.startAt(prefix); err != nil {
			c.err = err
			return c
		}
		c.walks = append(c.walks, w)
	}
	return c
}

// startAt starts a walk at prefix: a ref of that name, a directory of
// them, or nothing.
func (w *kindWalk) startAt(prefix string) error {
	if ValidateRef(prefix) != nil {
		return nil // names no ref
	}
	p := filepath.Join(w.dir, filepath.FromSlash(prefix))
	var st unix.Stat_t
	err := unix.Lstat(p, &st)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTDIR) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing refs under %s: %w", prefix, &fs.PathError{Op: "lstat", Path: p, Err: err})
	}
	parent, base := path.Split(prefix)
	e := refEntry{key: base}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.key += "/"
	case unix.S_IFREG:
		if !w.named(prefix) {
			return nil
		}
		if w.data {
			if e.ref = readRef(unix.AT_FDCWD, p, prefix); e.ref == nil {
				return nil
			}
		}
	default:
		return nil
	}
	if w.keep(parent + e.key) {
		w.stack = []refFrame{{rel: parent, entries: []refEntry{e}}}
	}
	return nil
}

// keep says whether a walk after w.after goes into the entry of that
// full name (ending in "/" for a directory).
func (w *kindWalk) keep(full string) bool {
	return full > w.after || strings.HasSuffix(full, "/") && strings.HasPrefix(w.after, full)
}

// named says whether the walk names the ref of that full name.
func (w *kindWalk) named(full string) bool {
	return ValidateRef(full) == nil && (w.match == nil || w.match.MatchString(full))
}

// Next moves to the next ref; false at the end or on an error (Err).
func (c *RefCursor) Next() bool {
	if c.err != nil {
		return false
	}
	c.cur = nil
	for _, w := range c.walks {
		if !w.hasHead {
			ok, err := w.next()
			if err != nil {
				c.err = err
				return false
			}
			w.hasHead = ok
		}
		if w.hasHead && (c.cur == nil || w.headName < c.cur.headName) {
			c.cur = w
		}
	}
	if c.cur == nil {
		return false
	}
	c.cur.hasHead = false
	return true
}

// Name is the ref Next moved to.
func (c *RefCursor) Name() string { return c.cur.headName }

// Kind is where the ref Next moved to is kept: never KindArtifact.
func (c *RefCursor) Kind() Kind { return c.cur.kind }

// Data is what a walk WithRefData read of the ref Next moved to, as
// ReadRef returns it; the error says why it could not be read (never
// ErrNotFound: a ref removed before it was read is not named).
func (c *RefCursor) Data() ([]byte, RefInfo, error) {
	r := c.cur.head.ref
	if r == nil {
		return nil, RefInfo{}, errors.New("refs walked without WithRefData")
	}
	return r.data, r.info, r.err
}

// Err is the error that ended the walk, if any.
func (c *RefCursor) Err() error { return c.err }

// next moves the walk to its next ref (head); false at its end.
func (w *kindWalk) next() (bool, error) {
	for len(w.stack) > 0 {
		top := &w.stack[len(w.stack)-1]
		if len(top.entries) == 0 {
			if top.dir != nil {
				top.dir.Close()
			}
			w.stack = w.stack[:len(w.stack)-1]
			continue
		}
		w.readAhead(top)
		e := top.entries[0]
		top.entries[0] = refEntry{} // what it read is not kept once walked
		top.entries = top.entries[1:]
		top.started--
		full := top.rel + e.key
		if e.sub != nil {
			<-e.sub.done
			if e.sub.err != nil {
				return false, e.sub.err
			}
			if len(e.sub.entries) > 0 {
				w.stack = append(w.stack, refFrame{rel: full, entries: e.sub.entries, dir: e.sub.dir})
			}
			continue
		}
		w.head, w.headName = e, full
		return true, nil
	}
	return false, nil
}

// readAhead starts the reads of the subdirectories among the next
// readAhead entries of a directory, the first included.
func (w *kindWalk) readAhead(f *refFrame) {
	for ; f.started < min(len(f.entries), readAhead); f.started++ {
		e := &f.entries[f.started]
		if e.key == "" || strings.HasSuffix(e.key, "/") {
			e.sub = w.startRead(f.dir, f.rel, e.key)
		}
	}
}

// startRead queues the read of the subdirectory key of the directory
// rel (open as parent, if it is) for the walk's readers.
func (w *kindWalk) startRead(parent *os.File, rel, key string) *dirRead {
	r := &dirRead{parent: parent, rel: rel + key, done: make(chan struct{})}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.queue = append(w.queue, r)
	if w.readers < walkReaders {
		w.readers++
		go w.read()
	}
	return r
}

// read is one of the walk's readers: it reads the directories queued, in
// order, until there are none.
func (w *kindWalk) read() {
	for {
		w.mu.Lock()
		if len(w.queue) == 0 {
			w.readers--
			w.mu.Unlock()
			return
		}
		r := w.queue[0]
		w.queue[0] = nil
		w.queue = w.queue[1:]
		w.mu.Unlock()
		r.entries, r.dir, r.err = w.readDir(r.parent, r.rel)
		r.parent = nil
		close(r.done)
	}
}

// direntBufs are the buffers directories are read into.
var direntBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// readDir lists the entries of the directory rel that the walk goes
// into, in order: subdirectories and the refs it names, each read
// WithRefData.
func (w *kindWalk) readDir(parent *os.File, rel string) (_ []refEntry, _ *os.File, err error) {
	dirPath := func() string { return filepath.Join(w.dir, filepath.FromSlash(rel)) }
	// Not os.Open and ReadDir: a directory is never polled, and a walk
	// of a big store reads one per artifact; the entries' types come
	// with their names (one Lstat where the file system does not say).
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	var fd int
	if parent == nil {
		fd, err = unix.Open(dirPath(), flags, 0)
	} else {
		fd, err = unix.Openat(int(parent.Fd()), filepath.Base(rel), flags, 0)
		runtime.KeepAlive(parent)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil // no refs yet, or removed while we walked
	}
	if err != nil {
		return nil, nil, fmt.Errorf("listing refs: %w", &fs.PathError{Op: "open", Path: dirPath(), Err: err})
	}
	handed := false // to the *os.File returned, which closes it
	defer func() {
		if !handed {
			unix.Close(fd)
		}
	}()
	buf := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(buf)
	var entries []refEntry
	for {
		n, err := unix.Getdents(fd, *buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("listing refs: %w", &fs.PathError{Op: "getdents", Path: dirPath(), Err: err})
		}
		if n == 0 {
			break
		}
		for b := (*buf)[:n]; len(b) > 0; {
			// A linux_dirent64: inode, offset, record length, type, name.
			reclen := 0
			if len(b) >= 19 {
				reclen = int(binary.NativeEndian.Uint16(b[16:18]))
			}
			if reclen < 19 || reclen > len(b) {
				return nil, nil, fmt.Errorf("listing refs: %s: a directory entry cut short", dirPath())
			}
			typ, name := b[18], b[19:reclen]
			b = b[reclen:]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if string(name) == "." || string(name) == ".." {
				continue
			}
			if typ == unix.DT_UNKNOWN {
				if typ, err = direntType(fd, string(name)); err != nil {
					return nil, nil, fmt.Errorf("listing refs: %w", &fs.PathError{Op: "lstat", Path: filepath.Join(dirPath(), string(name)), Err: err})
				}
			}
			key := string(name)
			switch typ {
			case unix.DT_DIR:
				key += "/"
			case unix.DT_REG:
				if !w.named(rel + key) {
					continue
				}
			default:
				continue
			}
			if w.keep(rel + key) {
				entries = append(entries, refEntry{key: key})
			}
		}
	}
	slices.SortFunc(entries, func(a, b refEntry) int { return strings.Compare(a.key, b.key) })
	var dir *os.File
	if slices.ContainsFunc(entries, func(e refEntry) bool { return strings.HasSuffix(e.key, "/") }) {
		dir, handed = os.NewFile(uintptr(fd), dirPath()), true
	}
	if !w.data {
		return slices.Clip(entries), dir, nil
	}
	kept := entries[:0]
	for _, e := range entries {
		if !strings.HasSuffix(e.key, "/") {
			if e.ref = readRef(fd, e.key, rel+e.key); e.ref == nil {
				continue // removed while we walked
			}
		}
		kept = append(kept, e)
	}
	return slices.Clip(kept), dir, nil
}

// readRef reads a ref for a walk WithRefData: nil when it is gone.
func readRef(dirfd int, name, ref string) *refRead {
	data, info, err := readRefAt(dirfd, name, ref)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return &refRead{data: data, info: info, err: err}
}

// direntType is the type of a directory's entry, as a dirent has it, for
// file systems whose dirents do not say: DT_UNKNOWN when it is gone.
func direntType(dirfd int, name string) (byte, error) {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, fs.ErrNotExist) {
		return unix.DT_UNKNOWN, nil
	}
	if err != nil {
		return 0, err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return unix.DT_DIR, nil
	case unix.S_IFREG:
		return unix.DT_REG, nil
	}
	return unix.DT_UNKNOWN, nil
}
