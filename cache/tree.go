package cache

import (
	"errors"
	"fmt"
	"strings"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"
)

// ErrBadDirectory is wrapped when a Directory message is malformed or has
// an entry name that could escape a checkout.
var ErrBadDirectory = errors.New("bad Directory")

// ValidateEntryName rejects names that are empty, ".", "..", or contain '/'
// or NUL: a Directory must never point outside itself.
func ValidateEntryName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%w: entry name %q", ErrBadDirectory, name)
	}
	return nil
}

// ParseDirectory decodes a Directory and validates its entries and digests.
func ParseDirectory(data []byte) (*repb.Directory, error) {
	dir := &repb.Directory{}
	if err := proto.Unmarshal(data, dir); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadDirectory, err)
	}
	seen := map[string]bool{}
	check := func(name string, d *repb.Digest) error {
		if err := ValidateEntryName(name); err != nil {
			return err
		}
		if seen[name] {
			return fmt.Errorf("%w: duplicate entry %q", ErrBadDirectory, name)
		}
		seen[name] = true
		if d != nil {
			if _, err := digest.NewFromProto(d); err != nil {
				return fmt.Errorf("%w: entry %q: %v", ErrBadDirectory, name, err)
			}
		}
		return nil
	}
	for _, f := range dir.GetFiles() {
		if f.GetDigest() == nil {
			return nil, fmt.Errorf("%w: file %q has no digest", ErrBadDirectory, f.GetName())
		}
		if err := check(f.GetName(), f.GetDigest()); err != nil {
			return nil, err
		}
	}
	for _, d := range dir.GetDirectories() {
		if d.GetDigest() == nil {
			return nil, fmt.Errorf("%w: directory %q has no digest", ErrBadDirectory, d.GetName())
		}
		if err := check(d.GetName(), d.GetDigest()); err != nil {
			return nil, err
		}
	}
	for _, l := range dir.GetSymlinks() {
		if err := check(l.GetName(), nil); err != nil {
			return nil, err
		}
	}
	return dir, nil
}

// Closure walks the tree rooted at the Directory root in the store and
// returns every digest it needs (Directories and files, root included, each
// once) and those the store lacks. Below a missing Directory nothing more
// can be known; its digest is in missing.
func (s *Store) Closure(root digest.Digest) (all, missing []digest.Digest, err error) {
	return s.ClosureOf(Roots{Dirs: []digest.Digest{root}})
}
