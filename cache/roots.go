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
	w := NewWalk(r)
	for level := w.Next(); len(level) > 0; level = w.Next() {
		for _, d := range level {
			all = append(all, d)
			data, err := s.ReadBlob(d)
			if errors.Is(err, ErrNotFound) {
				missing = append(missing, d)
				continue
			}
			if err != nil {
				return nil, nil, err
			}
			if _, err := w.Add(d, data); err != nil {
				return nil, nil, err
			}
		}
	}
	for _, d := range w.Files {
		all = append(all, d)
		if ok, err := s.Has(d); err != nil {
			return nil, nil, err
		} else if !ok {
			missing = append(missing, d)
		}
	}
	return all, missing, nil
}
