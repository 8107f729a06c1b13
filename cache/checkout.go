package cache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
)

// CheckoutOptions tune Checkout.
type CheckoutOptions struct {
	// Copy copies every file. The default hard-links files that are not
	// executable from the store (objects are shared with the store: do
	// not edit them in place) and copies the rest.
	Copy bool
}

// Checkout writes the tree under the Directory root into dir, which must
// not exist or be empty: files with their executable bits, symlinks as
// stored, empty directories. The whole tree is read and validated first
// (entry names, every blob present with its size), so a tree that is
// incomplete or could write outside dir is refused before anything is
// written; writes never follow a symlink. It returns the files written.
func (s *Store) Checkout(root digest.Digest, dir string, o CheckoutOptions) (int, error) {
	tree := map[digest.Digest]*repb.Directory{}
	if err := s.readTree(root, tree); err != nil {
		return 0, err
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return 0, fmt.Errorf("%s is not empty", dir)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	n := 0
	err := s.writeTree(tree, root, dir, o, &n)
	return n, err
}

// readTree reads and validates every Directory under d and checks that
// every file blob is present with its size.
func (s *Store) readTree(d digest.Digest, tree map[digest.Digest]*repb.Directory) error {
	if _, ok := tree[d]; ok {
		return nil
	}
	data, err := s.ReadBlob(d)
	if err != nil {
		return fmt.Errorf("directory %s: %w", d, err)
	}
	dir, err := ParseDirectory(data)
	if err != nil {
		return fmt.Errorf("directory %s: %w", d, err)
	}
	tree[d] = dir
	for _, f := range dir.GetFiles() {
		fd := digest.NewFromProtoUnvalidated(f.GetDigest())
		if ok, err := s.Has(fd); err != nil {
			return err
		} else if !ok && fd.Size > 0 {
			return fmt.Errorf("file %q (%s): %w", f.GetName(), fd, ErrNotFound)
		}
	}
	for _, sub := range dir.GetDirectories() {
		if err := s.readTree(digest.NewFromProtoUnvalidated(sub.GetDigest()), tree); err != nil {
			return err
		}
	}
	return nil
}

// writeTree writes one validated Directory into path, which exists.
func (s *Store) writeTree(tree map[digest.Digest]*repb.Directory, d digest.Digest, path string, o CheckoutOptions, n *int) error {
	dir := tree[d]
	for _, f := range dir.GetFiles() {
		if err := s.writeFile(digest.NewFromProtoUnvalidated(f.GetDigest()), filepath.Join(path, f.GetName()), f.GetIsExecutable(), o); err != nil {
			return err
		}
		*n++
	}
	for _, l := range dir.GetSymlinks() {
		if err := os.Symlink(l.GetTarget(), filepath.Join(path, l.GetName())); err != nil {
			return err
		}
	}
	for _, sub := range dir.GetDirectories() {
		p := filepath.Join(path, sub.GetName())
		if err := os.Mkdir(p, 0o755); err != nil {
			return err
		}
		if err := s.writeTree(tree, digest.NewFromProtoUnvalidated(sub.GetDigest()), p, o, n); err != nil {
			return err
		}
	}
	return nil
}

// writeFile creates a new file at dest (never through a symlink): a hard
// link to the object when allowed, else a copy.
func (s *Store) writeFile(d digest.Digest, dest string, exec bool, o CheckoutOptions) error {
	if !exec && !o.Copy && d.Size > 0 {
		if err := os.Link(s.ObjectPath(d), dest); err == nil {
			return nil
		}
	}
	mode := os.FileMode(0o644)
	if exec {
		mode = 0o755
	}
	out, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, mode)
	if err != nil {
		return err
	}
	if d.Size > 0 {
		in, err := s.Open(d)
		if err != nil {
			out.Close()
			return err
		}
		_, err = io.Copy(out, in)
		in.Close()
		if err != nil {
			out.Close()
			return fmt.Errorf("writing %s: %w", dest, err)
		}
	}
	if err := out.Chmod(mode); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
