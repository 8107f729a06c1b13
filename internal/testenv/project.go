package testenv

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// Project is a BuildStream 1.6 project of import elements written for a test.
type Project struct {
	Dir  string
	Name string
	// Elements are the element files, e.g. "hello.bst".
	Elements []string
}

// WriteProject writes a project named name with two import elements whose
// files cover what artifacts must carry: executable bits, symlinks, empty
// files, an empty directory, nested directories and a multi-MiB file.
func WriteProject(t testing.TB, name string) *Project {
	t.Helper()
	dir := t.TempDir()
	p := &Project{Dir: dir, Name: name, Elements: []string{"hello.bst", "world.bst"}}
	write := func(rel, content string, mode fs.FileMode) {
		path := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("project.conf", "name: "+name+"\nelement-path: elements\n", 0o644)
	for _, el := range p.Elements {
		base := el[:len(el)-len(".bst")]
		write("elements/"+el, "kind: import\nsources:\n- kind: local\n  path: files/"+base+"\n", 0o644)
	}
	write("files/hello/README", "hello from bst-cache tests\n", 0o644)
	write("files/hello/bin/run.sh", "#!/bin/sh\necho hello\n", 0o755)
	write("files/hello/empty", "", 0o644)
	write("files/hello/a/b/c/deep.txt", "nested\n", 0o644)
	if err := os.Symlink("bin/run.sh", filepath.Join(dir, "files/hello/link")); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3<<20+17)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	write("files/hello/big.bin", string(big), 0o644)
	if err := os.MkdirAll(filepath.Join(dir, "files/hello/an/empty-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	write("files/world/world.txt", "world\n", 0o644)
	// Shared content: the same bytes in both elements.
	write("files/world/shared.txt", "hello from bst-cache tests\n", 0o644)
	return p
}

// TreeSnapshot describes a directory tree for comparisons: each path with
// its type, mode bits that matter, and content or link target.
func TreeSnapshot(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = "symlink -> " + target
		case d.IsDir():
			out[rel] = "dir"
		default:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = fmt.Sprintf("file exec=%t size=%d sha256=%x", info.Mode()&0o100 != 0, len(data), sha256.Sum256(data))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// WriteDepsProject writes a BuildStream 1.6 project "demo" whose
// apps/app.bst depends on lib.bst (which depends on base.bst) and on
// libsub.bst through the junction sub.bst (a subproject named "sub"), so
// app's and lib's weak keys differ from their strong keys. projectConf is
// added to project.conf (e.g. an artifacts: section).
func WriteDepsProject(t testing.TB, projectConf string) *Project {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"project.conf":             "name: demo\nelement-path: elements\n" + projectConf,
		"elements/base.bst":        "kind: import\nsources:\n- kind: local\n  path: files/base\n",
		"elements/lib.bst":         "kind: import\ndepends:\n- base.bst\nsources:\n- kind: local\n  path: files/lib\n",
		"elements/sub.bst":         "kind: junction\nsources:\n- kind: local\n  path: sub\n",
		"elements/apps/app.bst":    "kind: import\ndepends:\n- lib.bst\n- junction: sub.bst\n  filename: libsub.bst\nsources:\n- kind: local\n  path: files/app\n",
		"files/base/etc/base.txt":  "base\n",
		"files/lib/lib/lib.txt":    "lib\n",
		"files/app/bin/app":        "#!/bin/sh\necho app\n",
		"sub/project.conf":         "name: sub\nelement-path: elements\n",
		"sub/elements/libsub.bst":  "kind: import\nsources:\n- kind: local\n  path: files/libsub\n",
		"sub/files/libsub/sub.txt": "from the subproject\n",
	}
	for rel, content := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &Project{Dir: dir, Name: "demo", Elements: []string{"apps/app.bst"}}
}
