package cache

import (
	"fmt"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// Walk collects what a set of roots needs, breadth first and level by
// level, each digest once: take a level's Directories with Next, Add each
// one's bytes, then take the next level. Files are the plain blobs found
// so far (the roots' blobs first). Where the Directories come from is the
// caller's business: the store, a remote cache, a GetTree answer.
type Walk struct {
	seen  map[digest.Digest]bool
	Files []digest.Digest
	next  []digest.Digest
}

// NewWalk starts a walk at roots.
func NewWalk(roots Roots) *Walk {
	w := &Walk{seen: map[digest.Digest]bool{}}
	for _, d := range roots.Blobs {
		w.see(d, &w.Files)
	}
	for _, d := range roots.Dirs {
		w.see(d, &w.next)
	}
	return w
}

func (w *Walk) see(d digest.Digest, list *[]digest.Digest) {
	if !w.seen[d] {
		w.seen[d] = true
		*list = append(*list, d)
	}
}

// Add reads one Directory of the current level, validated by
// ParseDirectory, and returns it.
func (w *Walk) Add(d digest.Digest, data []byte) (*repb.Directory, error) {
	dir, err := ParseDirectory(data)
	if err != nil {
		return nil, fmt.Errorf("directory %s: %w", d, err)
	}
	for _, f := range dir.GetFiles() {
		w.see(digest.NewFromProtoUnvalidated(f.GetDigest()), &w.Files)
	}
	for _, sub := range dir.GetDirectories() {
		w.see(digest.NewFromProtoUnvalidated(sub.GetDigest()), &w.next)
	}
	return dir, nil
}

// Next hands over the Directories found since the last call: the next
// level. It is empty when the walk is done.
func (w *Walk) Next() []digest.Digest {
	l := w.next
	w.next = nil
	return l
}
