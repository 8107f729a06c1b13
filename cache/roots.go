package cache

import (
	"errors"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// Roots are what a ref names in CAS: Directories (each with its whole tree)
// and plain blobs.
type Roots struct {
	Dirs  []digest.Digest
	Blobs []digest.Digest
}

// Add appends other's roots.
func (r *Roots) Add(other Roots) {
	r.Dirs = append(r.Dirs, other.Dirs...)
	r.Blobs = append(r.Blobs, other.Blobs...)
}

// ClosureOf is Closure over several roots: every digest they need (each
// once) and those the store lacks.
func (s *Store) ClosureOf(r Roots) (all, missing []digest.Digest, err error) {
	dirs, files, missing, err := s.walkTree(r, s.ReadBlob)
	if err != nil {
		return nil, nil, err
	}
	for _, d := range files {
		if ok, err := s.Has(d); err != nil {
			return nil, nil, err
		} else if !ok {
			missing = append(missing, d)
		}
	}
	return append(dirs, files...), missing, nil
}

// Reach lists every digest roots need (each once), for bookkeeping that
// must not cost a hash of every Directory (serve's quota account at
// start-up): Directories are read without being hashed again (the store
// checked them when they were written, and reads that serve them check
// them again), files are not looked for, and what is under a Directory the
// store lacks is left out.
func (s *Store) Reach(r Roots) ([]digest.Digest, error) {
	dirs, files, _, err := s.walkTree(r, s.readUnchecked)
	if err != nil {
		return nil, err
	}
	return append(dirs, files...), nil
}

// walkTree walks the Directories under roots, read with read: the
// Directories and files found (each once), and the Directories the store
// lacks.
func (s *Store) walkTree(r Roots, read func(digest.Digest) ([]byte, error)) (dirs, files, missing []digest.Digest, err error) {
	w := NewWalk(r)
	for level := w.Next(); len(level) > 0; level = w.Next() {
		for _, d := range level {
			dirs = append(dirs, d)
			data, err := read(d)
			if errors.Is(err, ErrNotFound) {
				missing = append(missing, d)
				continue
			}
			if err != nil {
				return nil, nil, nil, err
			}
			if _, err := w.Add(d, data); err != nil {
				return nil, nil, nil, err
			}
		}
	}
	return dirs, w.Files, missing, nil
}
