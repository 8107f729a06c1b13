package cache

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"
)

func addDir(t *testing.T, s *Store, d *repb.Directory) digest.Digest {
	t.Helper()
	data, err := proto.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	dg, err := s.Add(data)
	if err != nil {
		t.Fatal(err)
	}
	return dg
}

// Checkout writes modes, symlinks, empty files and directories, hard links
// what is not executable unless asked to copy, and refuses a hostile tree
// before it writes anything.
func TestCheckout(t *testing.T) {
	s, err := Open(t.TempDir(), KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	text, _ := s.Add([]byte("text\n"))
	script, _ := s.Add([]byte("#!/bin/sh\n"))
	empty, _ := s.Add(nil)
	sub := addDir(t, s, &repb.Directory{Files: []*repb.FileNode{{Name: "empty", Digest: empty.ToProto()}}})
	none := addDir(t, s, &repb.Directory{})
	root := addDir(t, s, &repb.Directory{
		Files:       []*repb.FileNode{{Name: "a.txt", Digest: text.ToProto()}, {Name: "run", Digest: script.ToProto(), IsExecutable: true}},
		Directories: []*repb.DirectoryNode{{Name: "sub", Digest: sub.ToProto()}, {Name: "nothing", Digest: none.ToProto()}},
		Symlinks:    []*repb.SymlinkNode{{Name: "link", Target: "a.txt"}, {Name: "abs", Target: "/usr/bin"}},
	})
	for _, copy := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "out")
		n, err := s.Checkout(root, dir, CheckoutOptions{Copy: copy})
		if err != nil || n != 3 {
			t.Fatalf("checkout (copy=%t): %d files, %v", copy, n, err)
		}
		st, _ := os.Stat(filepath.Join(dir, "run"))
		if st.Mode().Perm() != 0o755 {
			t.Errorf("run: mode %v", st.Mode())
		}
		if l, _ := os.Readlink(filepath.Join(dir, "abs")); l != "/usr/bin" {
			t.Errorf("abs -> %q", l)
		}
		if st, err := os.Stat(filepath.Join(dir, "nothing")); err != nil || !st.IsDir() {
			t.Errorf("empty directory: %v", err)
		}
		if st, err := os.Stat(filepath.Join(dir, "sub", "empty")); err != nil || st.Size() != 0 {
			t.Errorf("empty file: %v", err)
		}
		a, _ := os.Stat(filepath.Join(dir, "a.txt"))
		obj, _ := os.Stat(s.ObjectPath(text))
		if linked := os.SameFile(a, obj); linked == copy {
			t.Errorf("copy=%t: a.txt hard-linked from the store: %t", copy, linked)
		}
	}

	// Hostile trees: a name that climbs out, one with a slash, and a
	// symlink and a directory of the same name (writes would go through
	// the link). Nothing is written for any of them.
	evil := map[string]*repb.Directory{
		"dot-dot": {Directories: []*repb.DirectoryNode{{Name: "..", Digest: sub.ToProto()}}},
		"slash":   {Files: []*repb.FileNode{{Name: "a/b", Digest: text.ToProto()}}},
		"link-then-dir": {
			Symlinks:    []*repb.SymlinkNode{{Name: "x", Target: "/tmp"}},
			Directories: []*repb.DirectoryNode{{Name: "x", Digest: sub.ToProto()}},
		},
		"deep": {Directories: []*repb.DirectoryNode{{Name: "ok", Digest: addDir(t, s, &repb.Directory{Files: []*repb.FileNode{{Name: "..", Digest: text.ToProto()}}}).ToProto()}}},
	}
	for name, d := range evil {
		dir := filepath.Join(t.TempDir(), "out")
		_, err := s.Checkout(addDir(t, s, d), dir, CheckoutOptions{})
		if err == nil || !strings.Contains(err.Error(), "bad Directory") {
			t.Errorf("%s: %v; want a bad Directory", name, err)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("%s: something was written to %s", name, dir)
		}
	}
	// A missing blob is found before anything is written too.
	gone := addDir(t, s, &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: digest.NewFromBlob([]byte("not stored")).ToProto()}}})
	dir := filepath.Join(t.TempDir(), "out")
	if _, err := s.Checkout(gone, dir, CheckoutOptions{}); err == nil {
		t.Error("a tree with a missing blob was checked out")
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("something was written for an incomplete tree")
	}
}
