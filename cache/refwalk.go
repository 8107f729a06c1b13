package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// RefCursor walks refs in name order (byte order of the whole name, as
// sort.Strings has it), reading their directories one at a time as it
// comes to them: a walk that stops after n refs has read the directories
// on the way to them, not every ref. Use it as a bufio.Scanner:
//
//	c := s.Refs(KindArtifact, "", "")
//	for c.Next() { use(c.Name(), c.Kind()) }
//	if err := c.Err(); err != nil { … }
//
// Each directory is read when the walk enters it, so a ref that stays
// throughout a walk is named exactly once; one written or removed meanwhile
// may or may not be. A cursor may be kept and resumed later (serve does,
// between listing pages); it is not safe for concurrent use.
type RefCursor struct {
	walks []*kindWalk
	cur   *kindWalk
	err   error
}

// kindWalk walks one kind's ref directory.
type kindWalk struct {
	kind  Kind
	dir   string
	after string
	stack []refFrame
	// head is the next ref, read ahead to merge kinds in order.
	head    string
	hasHead bool
}

// refFrame is a directory the walk is in.
type refFrame struct {
	// rel is the directory's path under the kind's ref directory: "" or
	// ending in "/".
	rel string
	// keys are its entries still to walk, in order: subdirectories with
	// a trailing "/", which puts each directory's refs where their full
	// names sort.
	keys []string
}

// Refs starts a walk of the refs of a kind (for KindArtifact, those of
// both BuildStreams, merged in name order; a name held in both comes
// twice, BuildStream 1's first) named after `after` ("": from the first)
// and under prefix ("": all; "a/b": the ref a/b and those under a/b/).
func (s *Store) Refs(kind Kind, prefix, after string) *RefCursor {
	c := &RefCursor{}
	prefix = strings.Trim(prefix, "/")
	for _, k := range kind.Kinds() {
		dir, err := s.refDir(k)
		if err != nil {
			c.err = err
			return c
		}
		w := &kindWalk{kind: k, dir: dir, after: after}
		if prefix == "" {
			w.stack = []refFrame{{keys: []string{""}}}
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
	st, err := os.Lstat(filepath.Join(w.dir, filepath.FromSlash(prefix)))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrInvalid) || errors.Is(err, syscall.ENOTDIR) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing refs under %s: %w", prefix, err)
	}
	parent, base := path.Split(prefix)
	key := base
	if st.IsDir() {
		key += "/"
	} else if !st.Mode().IsRegular() {
		return nil
	}
	if w.keep(parent + key) {
		w.stack = []refFrame{{rel: parent, keys: []string{key}}}
	}
	return nil
}

// keep says whether a walk after w.after goes into the entry of that
// full name (ending in "/" for a directory).
func (w *kindWalk) keep(full string) bool {
	return full > w.after || strings.HasSuffix(full, "/") && strings.HasPrefix(w.after, full)
}

// Next moves to the next ref; false at the end or on an error (Err).
func (c *RefCursor) Next() bool {
	if c.err != nil {
		return false
	}
	c.cur = nil
	for _, w := range c.walks {
		if !w.hasHead {
			name, ok, err := w.next()
			if err != nil {
				c.err = err
				return false
			}
			w.head, w.hasHead = name, ok
		}
		if w.hasHead && (c.cur == nil || w.head < c.cur.head) {
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
func (c *RefCursor) Name() string { return c.cur.head }

// Kind is where the ref Next moved to is kept: never KindArtifact.
func (c *RefCursor) Kind() Kind { return c.cur.kind }

// Err is the error that ended the walk, if any.
func (c *RefCursor) Err() error { return c.err }

// next is the walk's next ref.
func (w *kindWalk) next() (string, bool, error) {
	for len(w.stack) > 0 {
		top := &w.stack[len(w.stack)-1]
		if len(top.keys) == 0 {
			w.stack = w.stack[:len(w.stack)-1]
			continue
		}
		key := top.keys[0]
		top.keys = top.keys[1:]
		full := top.rel + key
		if full == "" || strings.HasSuffix(full, "/") {
			keys, err := w.readDir(full)
			if err != nil {
				return "", false, err
			}
			if len(keys) > 0 {
				w.stack = append(w.stack, refFrame{rel: full, keys: keys})
			}
			continue
		}
		if ValidateRef(full) == nil {
			return full, true, nil
		}
	}
	return "", false, nil
}

// readDir lists the entries of the directory rel that the walk goes
// into, in order.
func (w *kindWalk) readDir(rel string) ([]string, error) {
	p := filepath.Join(w.dir, filepath.FromSlash(rel))
	// Not os.Open: a directory is never polled, and a walk of a big
	// store opens one per artifact.
	fd, err := syscall.Open(p, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // no refs yet, or removed while we walked
	}
	if err != nil {
		return nil, fmt.Errorf("listing refs: %w", &fs.PathError{Op: "open", Path: p, Err: err})
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	entries, err := f.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("listing refs in %s: %w", f.Name(), err)
	}
	keys := make([]string, 0, len(entries))
	for _, e := range entries {
		key := e.Name()
		switch {
		case e.IsDir():
			key += "/"
		case !e.Type().IsRegular():
			continue
		}
		if w.keep(rel + key) {
			keys = append(keys, key)
		}
	}
	slices.Sort(keys)
	return slices.Clip(keys), nil
}
