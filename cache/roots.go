package cache

import (
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
	seen := map[digest.Digest]bool{}
	for _, d := range r.Blobs {
		if seen[d] {
			continue
		}
		seen[d] = true
		all = append(all, d)
		if ok, err := s.Has(d); err != nil {
			return nil, nil, err
		} else if !ok {
			missing = append(missing, d)
		}
	}
	for _, root := range r.Dirs {
		a, m, err := s.closure(root, seen)
		if err != nil {
			return nil, nil, err
		}
		all, missing = append(all, a...), append(missing, m...)
	}
	return all, missing, nil
}
