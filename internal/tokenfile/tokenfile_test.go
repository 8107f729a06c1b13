package tokenfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// A rotated file is read again once the interval passed (not before); a
// file that turns bad keeps the last good token and is reported once; the
// token never shows in an error.
func TestRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	testenv.ReplaceFile(t, path, "first\n")
	var errs []error
	f, err := Open(path, func(f *File) { f.every = time.Hour }, WithOnError(func(err error) { errs = append(errs, err) }))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Token(); got != "first" {
		t.Fatalf("token %q, want first", got)
	}
	testenv.ReplaceFile(t, path, "second")
	if got := f.Token(); got != "first" {
		t.Fatalf("within the interval: token %q, want first (not looked at again)", got)
	}
	if got := f.Fresh(0); got != "second" {
		t.Fatalf("after a rotation: token %q, want second", got)
	}
	// In place, same size: the modification time or size tells.
	time.Sleep(10 * time.Millisecond)
	if err := os.WriteFile(path, []byte("third!"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := f.Fresh(0); got != "third!" {
		t.Fatalf("after an in-place write: token %q, want third!", got)
	}
	testenv.ReplaceFile(t, path, "")
	testenv.ReplaceFile(t, path, "two\nlines")
	for range 3 {
		if got := f.Fresh(0); got != "third!" {
			t.Fatalf("a bad file: token %q, want the last good one, third!", got)
		}
	}
	os.Remove(path)
	if got := f.Fresh(0); got != "third!" {
		t.Fatalf("a removed file: token %q, want the last good one", got)
	}
	if len(errs) != 1 || strings.Contains(errs[0].Error(), "two") || !strings.Contains(errs[0].Error(), path) {
		t.Fatalf("errors %v: want one, naming the file and not its content", errs)
	}
	testenv.ReplaceFile(t, path, "fourth")
	if got := f.Fresh(0); got != "fourth" {
		t.Fatalf("token %q, want fourth", got)
	}
	testenv.ReplaceFile(t, path, "")
	f.Fresh(0)
	if len(errs) != 2 {
		t.Fatalf("a bad file after a good one: %d errors, want 2", len(errs))
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
	path := filepath.Join(dir, "token")
	testenv.ReplaceFile(t, path, "secret\nmore")
	if _, err := Open(path); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("two lines: %v", err)
	}
}
