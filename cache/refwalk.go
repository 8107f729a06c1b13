package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
// walk of a big store uses more than one core, while the refs read ahead
// stay under aheadRefs), not every ref. A directory of more than partRefs
// refs (an element with thousands of keys) is read in parts of its
// entries in name order, each part when the walk comes to it: a walk holds
// a bounded number of refs whatever the store's shape. Use it as a
// bufio.Scanner:
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
// next readAhead entries of the directory it is in, walkReaders at once,
// while the entries read ahead and not yet walked are fewer than
// aheadRefs. A directory is read in parts of its entries in name order,
// each of partRefs refs (a subdirectory, a name the walk holds without
// what it names, weighs a refWeight'th of a ref), or of a partPasses'th
// of the directory if that is more: each part is a pass over the
// directory, so a directory costs at most partPasses passes more than
// one however big it is. Only directories bigger than BuildStream writes
// in the normal course (an element with thousands of keys, a project of
// over 100,000 elements) have more than one part.
const (
	readAhead   = 256
	walkReaders = 4
	aheadRefs   = 8192
	partRefs    = 8192
	refWeight   = 16
	partPasses  = 16
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
	// when it is empty or the entries read ahead (ahead) reach
	// aheadRefs: a walk dropped halfway leaves nothing behind). The walk
	// reads a directory it has come to itself if no reader took it.
	mu      sync.Mutex
	queue   []*dirRead
	readers int
	ahead   int
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
	// dir is the directory, open while its subdirectories or its next
	// part are read (opened from it: no path looked up again); nil in
	// the first frame, whose subdirectories are opened by their whole
	// path.
	dir *os.File
	// The directory's next part: as dirPart.
	more bool
	last string
	size int
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

// dirRead is the read of one directory's first part, done when done is
// closed.
type dirRead struct {
	// parent, rel: what to read (readDir).
	parent *os.File
	rel    string
	// taken: a reader, or the walk, is reading it.
	taken bool
	done  chan struct{}
	part  dirPart
	err   error
	// dir is the directory, kept open when it has subdirectories or
	// more parts.
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
		if len(top.entries) == 0 && top.more {
			// The directory's next part, read by the walk: it holds the
			// directory open, and no reader has it queued.
			p, err := w.readPart(int(top.dir.Fd()), top.rel, top.last, top.size)
			runtime.KeepAlive(top.dir)
			if err != nil {
				return false, err
			}
			top.entries, top.last, top.more, top.size, top.started = p.entries, p.last, p.more, p.size, 0
			continue
		}
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
			r := w.await(e.sub)
			if r.err != nil {
				return false, r.err
			}
			if p := r.part; len(p.entries) > 0 || p.more {
				w.stack = append(w.stack, refFrame{rel: full, entries: p.entries, dir: r.dir, more: p.more, last: p.last, size: p.size})
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
	w.wake()
	return r
}

// wake starts readers for the reads queued while the entries read ahead
// leave room; w.mu is held.
func (w *kindWalk) wake() {
	for ; w.readers < min(walkReaders, len(w.queue)) && w.ahead < aheadRefs; w.readers++ {
		go w.read()
	}
}

// await is r once read, by a reader or, if none took it, by the walk
// itself; its entries are the walk's from then on.
func (w *kindWalk) await(r *dirRead) *dirRead {
	w.mu.Lock()
	mine := !r.taken
	r.taken = true
	w.mu.Unlock()
	if mine {
		w.run(r)
	}
	<-r.done
	w.mu.Lock()
	w.ahead -= len(r.part.entries)
	w.wake()
	w.mu.Unlock()
	return r
}

// read is one of the walk's readers: it reads the directories queued, in
// order, until there are none or the entries read ahead reach aheadRefs.
func (w *kindWalk) read() {
	for {
		w.mu.Lock()
		for len(w.queue) > 0 && w.queue[0].taken {
			w.queue[0] = nil
			w.queue = w.queue[1:]
		}
		if len(w.queue) == 0 || w.ahead >= aheadRefs {
			w.readers--
			w.mu.Unlock()
			return
		}
		r := w.queue[0]
		w.queue[0] = nil
		w.queue = w.queue[1:]
		r.taken = true
		w.mu.Unlock()
		w.run(r)
	}
}

// run reads r's first part and counts its entries as read ahead until
// the walk takes them (await).
func (w *kindWalk) run(r *dirRead) {
	r.part, r.dir, r.err = w.readDir(r.parent, r.rel)
	r.parent = nil
	w.mu.Lock()
	w.ahead += len(r.part.entries)
	w.mu.Unlock()
	close(r.done)
}

// direntBufs are the buffers directories are read into.
var direntBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// readDir opens the directory rel that the walk goes into and reads its
// first part (readPart). The directory is returned open when it has
// subdirectories or more parts.
func (w *kindWalk) readDir(parent *os.File, rel string) (_ dirPart, _ *os.File, err error) {
	// Not os.Open and ReadDir: a directory is never polled, and a walk
	// of a big store reads one per artifact; the entries' types come
	// with their names (one Lstat where the file system does not say).
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	var fd int
	if parent == nil {
		fd, err = unix.Open(w.dirPath(rel), flags, 0)
	} else {
		fd, err = unix.Openat(int(parent.Fd()), filepath.Base(rel), flags, 0)
		runtime.KeepAlive(parent)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return dirPart{}, nil, nil // no refs yet, or removed while we walked
	}
	if err != nil {
		return dirPart{}, nil, fmt.Errorf("listing refs: %w", &fs.PathError{Op: "open", Path: w.dirPath(rel), Err: err})
	}
	p, err := w.readPart(fd, rel, "", partRefs*refWeight)
	if err != nil || !p.more && !slices.ContainsFunc(p.entries, func(e refEntry) bool { return strings.HasSuffix(e.key, "/") }) {
		unix.Close(fd)
		return p, nil, err
	}
	return p, os.NewFile(uintptr(fd), w.dirPath(rel)), nil
}

func (w *kindWalk) dirPath(rel string) string { return filepath.Join(w.dir, filepath.FromSlash(rel)) }

// dirPart is a part of a directory's entries, in order.
type dirPart struct {
	entries []refEntry
	// last is the key of the part's last entry; more says whether
	// entries follow it, to be read size at a time (in weight: a
	// subdirectory 1, a ref refWeight).
	last string
	more bool
	size int
}

// readPart lists, in order, the first entries after `after` ("": from the
// first) of the open directory rel that the walk goes into, up to size in
// weight: subdirectories and the refs it names, each read WithRefData (a
// ref removed meanwhile is left out). Each part is a pass over the whole
// directory, keeping at most twice size in names at a time.
func (w *kindWalk) readPart(fd int, rel, after string, size int) (p dirPart, _ error) {
	// A later part reads the directory again from its start (the first
	// reads it freshly opened).
	if after != "" {
		if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
			return dirPart{}, fmt.Errorf("listing refs: %w", &fs.PathError{Op: "seek", Path: w.dirPath(rel), Err: err})
		}
	}
	buf := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(buf)
	var entries []refEntry
	// cut, once set (p.more), is the last key this part can hold;
	// held weighs the entries, left those after `after`.
	cut, held, left := "", 0, 0
	weight := func(key string) int {
		if strings.HasSuffix(key, "/") {
			return 1
		}
		return refWeight
	}
	var kb []byte
	trim := func() {
		slices.SortFunc(entries, func(a, b refEntry) int { return strings.Compare(a.key, b.key) })
		held = 0
		for i, e := range entries {
			if held+weight(e.key) > size {
				entries, p.more, cut = entries[:i], true, entries[i-1].key
				return
			}
			held += weight(e.key)
		}
	}
	for {
		n, err := unix.Getdents(fd, *buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return dirPart{}, fmt.Errorf("listing refs: %w", &fs.PathError{Op: "getdents", Path: w.dirPath(rel), Err: err})
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
				return dirPart{}, fmt.Errorf("listing refs: %s: a directory entry cut short", w.dirPath(rel))
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
					return dirPart{}, fmt.Errorf("listing refs: %w", &fs.PathError{Op: "lstat", Path: filepath.Join(w.dirPath(rel), string(name)), Err: err})
				}
			}
			if typ != unix.DT_DIR && typ != unix.DT_REG {
				continue
			}
			// Outside the part, an entry costs no allocation: the
			// directories of many parts are read once a part.
			kb, wt := append(kb[:0], name...), refWeight
			if typ == unix.DT_DIR {
				kb, wt = append(kb, '/'), 1
			}
			if string(kb) <= after {
				continue
			}
			if left += wt; p.more && string(kb) > cut {
				continue
			}
			key := string(kb)
			if typ == unix.DT_REG && !w.named(rel+key) || !w.keep(rel+key) {
				continue
			}
			entries = append(entries, refEntry{key: key})
			if held += wt; held >= 2*size {
				trim()
			}
		}
	}
	trim()
	if len(entries) > 0 {
		p.last = entries[len(entries)-1].key
	}
	p.size = size
	if after == "" {
		// The first pass: the parts after it take a partPasses'th
		// of the directory each, at least size.
		p.size = max(size, left/partPasses)
	}
	if !w.data {
		p.entries = slices.Clip(entries)
		return p, nil
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
	p.entries = slices.Clip(kept)
	return p, nil
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
