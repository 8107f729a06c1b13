package transfer

import (
	"fmt"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/bst-cache/bst-cache/cache"
)

// walk collects what a set of roots needs, level by level, each digest
// once: feed it each Directory of the current level, then take the next.
type walk struct {
	seen  map[digest.Digest]bool
	files []digest.Digest // blobs found so far
	next  []digest.Digest // Directories of the next level
}

func newWalk(roots cache.Roots) *walk {
	w := &walk{seen: map[digest.Digest]bool{}}
	for _, d := range roots.Blobs {
		w.see(d, &w.files)
	}
	for _, d := range roots.Dirs {
		w.see(d, &w.next)
	}
	return w
}

func (w *walk) see(d digest.Digest, list *[]digest.Digest) {
	if !w.seen[d] {
		w.seen[d] = true
		*list = append(*list, d)
	}
}

// add reads one Directory's entries.
func (w *walk) add(d digest.Digest, data []byte) error {
	dir, err := cache.ParseDirectory(data) // validates names and digests
	if err != nil {
		return fmt.Errorf("directory %s: %w", d, err)
	}
	for _, f := range dir.GetFiles() {
		w.see(digest.NewFromProtoUnvalidated(f.GetDigest()), &w.files)
	}
	for _, sub := range dir.GetDirectories() {
		w.see(digest.NewFromProtoUnvalidated(sub.GetDigest()), &w.next)
	}
	return nil
}

// nextLevel hands over the Directories found since the last call.
func (w *walk) nextLevel() []digest.Digest {
	l := w.next
	w.next = nil
	return l
}

// childDigest finds the entry called name in a Directory: a subdirectory
// or a file.
func childDigest(dir *repb.Directory, name string) (digest.Digest, bool) {
	for _, d := range dir.GetDirectories() {
		if d.GetName() == name {
			return digest.NewFromProtoUnvalidated(d.GetDigest()), true
		}
	}
	for _, f := range dir.GetFiles() {
		if f.GetName() == name {
			return digest.NewFromProtoUnvalidated(f.GetDigest()), true
		}
	}
	return digest.Digest{}, false
}
