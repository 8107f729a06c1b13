package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"github.com/google/go-cmp/cmp"
)

func openTemp(t *testing.T, layout Kind) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), layout)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// tmpEntries lists what is left in the store's temporary directory.
func tmpEntries(t *testing.T, s *Store) []string {
	t.Helper()
	entries, err := os.ReadDir(s.tmp)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestLayoutPaths(t *testing.T) {
	d := digest.NewFromBlob([]byte("hello"))
	for _, tc := range []struct {
		layout      Kind
		object, ref string
	}{
		{KindBst1Artifact, "cas/objects/" + d.Hash[:2] + "/" + d.Hash[2:], "cas/refs/heads/p/e/k"},
		{KindBst2Artifact, "cas/cas/objects/" + d.Hash[:2] + "/" + d.Hash[2:], "artifacts/refs/p/e/k"},
	} {
		s := openTemp(t, tc.layout)
		if got, want := s.ObjectPath(d), filepath.Join(s.Root(), tc.object); got != want {
			t.Errorf("%s object path = %s; want %s", tc.layout, got, want)
		}
		got, err := s.RefPath(KindArtifact, "p/e/k")
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(s.Root(), tc.ref); got != want {
			t.Errorf("%s ref path = %s; want %s", tc.layout, got, want)
		}
	}
	s := openTemp(t, KindBst2Artifact)
	if got, _ := s.RefPath(KindSource, "p/s/k"); got != filepath.Join(s.Root(), "source_protos/p/s/k") {
		t.Errorf("bst2 source ref path = %s", got)
	}
	// A server's store keeps both generations, whatever its object layout.
	s1 := openTemp(t, KindBst1Artifact)
	for kind, want := range map[Kind]string{
		KindArtifact:     "cas/refs/heads/p/s/k",
		KindBst1Artifact: "cas/refs/heads/p/s/k",
		KindBst2Artifact: "artifacts/refs/p/s/k",
		KindAsset:        "assets/p/s/k",
	} {
		if got, err := s1.RefPath(kind, "p/s/k"); err != nil || got != filepath.Join(s1.Root(), want) {
			t.Errorf("bst1 %s ref path = %s, %v; want %s", kind, got, err, want)
		}
	}
	if _, err := s1.RefPath("nonsense", "p/s/k"); err == nil {
		t.Error("unknown kind: RefPath succeeded")
	}
}

func TestPutReadVerify(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	data := bytes.Repeat([]byte("0123456789"), 100000)
	d := digest.NewFromBlob(data)
	if ok, _ := s.Has(d); ok {
		t.Fatal("Has before Put")
	}
	if err := s.Put(d, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Has(d); !ok || err != nil {
		t.Fatalf("Has after Put = %v, %v", ok, err)
	}
	got, err := s.ReadBlob(d)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadBlob = %d bytes, %v", len(got), err)
	}
	st, err := os.Stat(s.ObjectPath(d))
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("object mode = %v, %v; want 0644 (BuildStream hard-links objects)", st.Mode(), err)
	}
	// Putting it again is harmless.
	if err := s.Put(d, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(d); err != nil {
		t.Fatal(err)
	}
	// Corrupt it behind the store's back: Verify and ReadBlob notice.
	corrupt := bytes.Clone(data)
	corrupt[len(corrupt)/2] ^= 0xff
	if err := os.WriteFile(s.ObjectPath(d), corrupt, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(d); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("Verify of a corrupt object = %v; want ErrDigestMismatch", err)
	}
	if _, err := s.ReadBlob(d); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("ReadBlob of a corrupt object = %v; want ErrDigestMismatch", err)
	}
	if _, err := s.Open(digest.NewFromBlob([]byte("absent"))); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open of an absent blob = %v; want ErrNotFound", err)
	}
	empty := digest.NewFromBlob(nil)
	if err := s.PutBytes(empty, nil); err != nil {
		t.Fatalf("empty blob: %v", err)
	}
	if ok, _ := s.Has(empty); !ok {
		t.Error("empty blob not stored")
	}
}

func TestPutRejectsBadData(t *testing.T) {
	s := openTemp(t, KindBst2Artifact)
	data := []byte("the right content")
	d := digest.NewFromBlob(data)
	for name, r := range map[string]io.Reader{
		"other bytes": strings.NewReader("the wrong content"),
		"too short":   strings.NewReader("the right"),
		"too long":    strings.NewReader("the right content, and more"),
		"read error":  io.MultiReader(strings.NewReader("the"), errReader{}),
	} {
		t.Run(name, func(t *testing.T) {
			if err := s.Put(d, r); err == nil {
				t.Fatal("Put succeeded")
			}
			if ok, _ := s.Has(d); ok {
				t.Error("a rejected blob is in the store")
			}
			if _, err := os.Stat(s.ObjectPath(d)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("object file exists after a rejected Put: %v", err)
			}
			if left := tmpEntries(t, s); len(left) != 0 {
				t.Errorf("temporary files left behind: %v", left)
			}
		})
	}
	bad := digest.Digest{Hash: "../../../../etc/passwd", Size: 1}
	if err := s.Put(bad, strings.NewReader("x")); err == nil {
		t.Error("Put accepted a digest that is not a hash")
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func TestValidateRef(t *testing.T) {
	for _, ok := range []string{"demo/hello/1d893b4d", "a", "p/el-name_x.y/key"} {
		if err := ValidateRef(ok); err != nil {
			t.Errorf("ValidateRef(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "/abs/ref", "a/../b", "..", "../x", "a/./b", "a//b", "a/", "a\x00b", `a\b`} {
		if err := ValidateRef(bad); !errors.Is(err, ErrInvalidRef) {
			t.Errorf("ValidateRef(%q) = %v; want ErrInvalidRef", bad, err)
		}
	}
	s := openTemp(t, KindBst1Artifact)
	if err := s.SetRef(KindArtifact, "../escape", []byte("x")); !errors.Is(err, ErrInvalidRef) {
		t.Errorf("SetRef with .. = %v", err)
	}
}

func TestRefs(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	refs := []string{"demo/hello/aaaa", "demo/hello/bbbb", "demo/world/cccc", "other/x/dddd"}
	for i, r := range refs {
		if err := s.SetRef(KindArtifact, r, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.GetRef(KindArtifact, "demo/world/cccc")
	if err != nil || !bytes.Equal(got, []byte{2}) {
		t.Errorf("GetRef = %v, %v", got, err)
	}
	if _, err := s.GetRef(KindArtifact, "demo/none/x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetRef of a missing ref = %v; want ErrNotFound", err)
	}
	if _, err := s.GetRef(KindArtifact, "demo/hello"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetRef of a ref directory = %v; want ErrNotFound", err)
	}
	names := func(pattern string) []string {
		infos, err := s.ListRefs(KindArtifact, pattern)
		if err != nil {
			t.Fatal(err)
		}
		var n []string
		for _, i := range infos {
			n = append(n, i.Name)
		}
		return n
	}
	for _, tc := range []struct {
		pattern string
		want    []string
	}{
		{"", refs},
		{"demo/*", refs[:3]},
		{"*/hello/*", refs[:2]},
		{"demo/hello/[ab]???", refs[:2]},
		{"demo/hello/[!a]*", refs[1:2]},
		{"nothing*", nil},
	} {
		if diff := cmp.Diff(tc.want, names(tc.pattern)); diff != "" {
			t.Errorf("ListRefs(%q) (-want +got):\n%s", tc.pattern, diff)
		}
	}
	if err := s.DeleteRef(KindArtifact, "demo/hello/aaaa"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(refs[1:3], names("demo/*")); diff != "" {
		t.Errorf("after delete (-want +got):\n%s", diff)
	}
	empty := openTemp(t, KindBst2Artifact)
	if infos, err := empty.ListRefs(KindSource, ""); err != nil || len(infos) != 0 {
		t.Errorf("ListRefs on an empty store = %v, %v", infos, err)
	}
}

// TestConcurrentWriters has many writers store overlapping blobs and refs
// at once; everything must end up present and intact.
func TestConcurrentWriters(t *testing.T) {
	s := openTemp(t, KindBst2Artifact)
	var blobs [][]byte
	for i := range 50 {
		blobs = append(blobs, bytes.Repeat([]byte(fmt.Sprintf("blob %d ", i)), 1000*(i%5+1)))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16*len(blobs))
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range blobs {
				b := blobs[(i+w)%len(blobs)]
				if _, err := s.Add(b); err != nil {
					errs <- err
				}
				if err := s.SetRef(KindArtifact, fmt.Sprintf("p/e/%d", i%7), b[:10]); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, b := range blobs {
		if err := s.Verify(digest.NewFromBlob(b)); err != nil {
			t.Error(err)
		}
	}
	if left := tmpEntries(t, s); len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

func TestPutVerifiedChecksSize(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	data := []byte("verified elsewhere")
	d := digest.NewFromBlob(data)
	if err := s.PutVerified(d, data[:5]); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("a short blob: %v; want ErrDigestMismatch", err)
	}
	if err := s.PutVerified(d, data); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(d); err != nil {
		t.Error(err)
	}
}

// The store repairs itself: an object whose size does not match its digest
// (truncated by a crash or by hand) is replaced by the next verified write
// of it, and temporary files a killed writer left behind go at the next
// open, while a fresh one (a writer still at work) stays.
func TestStoreRepairs(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("the whole content of a blob")
	d, err := s.Add(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(s.ObjectPath(d), 5); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.Has(d); ok {
		t.Fatal("a truncated object counts as present")
	}
	for _, put := range []func() error{
		func() error { return s.PutBytes(d, data) },
		func() error { return s.PutVerified(d, data) },
	} {
		if err := os.Truncate(s.ObjectPath(d), 5); err != nil {
			t.Fatal(err)
		}
		if err := put(); err != nil {
			t.Fatal(err)
		}
		if err := s.Verify(d); err != nil {
			t.Errorf("after writing it again: %v", err)
		}
	}

	old := filepath.Join(dir, "tmp", "ref-killed")
	fresh := filepath.Join(dir, "tmp", "ref-in-progress")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-time.Hour)
	os.Chtimes(old, long, long)
	if _, err := Open(dir, KindBst1Artifact); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); err == nil {
		t.Error("a temporary file left by a killed writer was not cleaned")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Error("a fresh temporary file (a writer at work) was removed")
	}
}

// SetRefs writes an artifact's refs after one sync; one that cannot be
// written fails the call and leaves no partial ref, under its own name or
// in the temporary directory, while those before it are whole.
func TestSetRefsStopsWhole(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	data := []byte("a serialized digest")
	if err := s.SetRefs(KindArtifact, nil, data); err != nil {
		t.Fatal(err)
	}
	// A file where the second ref's directory would be.
	if err := s.SetRef(KindArtifact, "p/blocked", []byte("x")); err != nil {
		t.Fatal(err)
	}
	refs := []string{"p/e/strong", "p/blocked/weak", "p/e/other"}
	if err := s.SetRefs(KindArtifact, refs, data); err == nil {
		t.Fatal("SetRefs wrote a ref under a file")
	}
	if got, err := s.GetRef(KindArtifact, "p/e/strong"); err != nil || string(got) != string(data) {
		t.Errorf("the ref before the failure: %q, %v", got, err)
	}
	for _, ref := range refs[1:] {
		if _, err := s.GetRef(KindArtifact, ref); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s after the failure: %v, want not found", ref, err)
		}
	}
	if left := tmpEntries(t, s); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	if err := s.SetRefs(KindArtifact, []string{"p/e/strong", "p/e/weak"}, []byte("new")); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"p/e/strong", "p/e/weak"} {
		if got, err := s.GetRef(KindArtifact, ref); err != nil || string(got) != "new" {
			t.Errorf("%s: %q, %v", ref, got, err)
		}
	}
}

// The refs of one write are files of their own, not links to one file:
// a ref written in place (as a script, a test or another tool may write
// one) changes that ref alone, and a ref written again by the store
// leaves the others as they were. Nothing is left in the temporary
// directory.
func TestSetRefsAreFilesOfTheirOwn(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	refs := []string{"p/e/strong", "p/e/weak", "p/e/other"}
	if err := s.SetRefs(KindArtifact, refs, []byte("old")); err != nil {
		t.Fatal(err)
	}
	if left := tmpEntries(t, s); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	weak, err := s.RefPath(KindArtifact, "p/e/weak")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(weak, []byte("in place"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRef(KindArtifact, "p/e/other", []byte("new")); err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]string{"p/e/strong": "old", "p/e/weak": "in place", "p/e/other": "new"} {
		if got, err := s.GetRef(KindArtifact, ref); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", ref, got, err, want)
		}
	}
}

// PutVerified of a blob another writer stored in the meantime leaves it
// as it is, and nothing behind.
func TestPutVerifiedPresent(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	data := []byte("stored twice")
	d := digest.NewFromBlob(data)
	for range 2 {
		if err := s.PutVerified(d, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Verify(d); err != nil {
		t.Fatal(err)
	}
	if left := tmpEntries(t, s); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// Walks from byte 0 to 256 in parts meet every object once, as one
// WalkObjects does, each part whole fan-out directories in order: with
// parts of at least 1, 50 and every object, in both layouts, with a
// directory that is not a fan-out one among them.
func TestWalkObjectsFromInParts(t *testing.T) {
	for _, layout := range []Kind{KindBst1Artifact, KindBst2Artifact} {
		s := openTemp(t, layout)
		want := map[string]bool{}
		for i := range 300 {
			d, err := s.Add(fmt.Appendf(nil, "object %d", i))
			if err != nil {
				t.Fatal(err)
			}
			want[d.Hash] = true
		}
		if err := os.MkdirAll(filepath.Join(s.objects(), "zz"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, part := range []int{1, 50, 1 << 30} {
			got := map[string]bool{}
			walks := 0
			for from := 0; from < 256; walks++ {
				n := 0
				next, err := s.WalkObjectsFrom(from, func() bool { return n >= part }, func(fan []ObjectInfo) error {
					for _, o := range fan {
						if o.Digest.Hash[:2] != fan[0].Digest.Hash[:2] {
							t.Errorf("%s, parts of %d: %s given with %s, of another directory", layout, part, o.Digest.Hash, fan[0].Digest.Hash)
						}
						if b := int(hexValue(o.Digest.Hash[0]))<<4 | int(hexValue(o.Digest.Hash[1])); b < from || got[o.Digest.Hash] {
							t.Errorf("%s, parts of %d: %s met again or before %d", layout, part, o.Digest.Hash, from)
						}
						got[o.Digest.Hash] = true
					}
					n += len(fan)
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				if next <= from {
					t.Fatalf("%s, parts of %d: walk from %d goes on at %d", layout, part, from, next)
				}
				from = next
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s, parts of %d (-want +got):\n%s", layout, part, diff)
			}
			if part == 1<<30 && walks != 1 || part == 50 && (walks < 6 || walks > 7) {
				t.Errorf("%s: parts of %d took %d walks", layout, part, walks)
			}
		}
	}
}

func hexValue(c byte) byte {
	if c >= 'a' {
		return c - 'a' + 10
	}
	return c - '0'
}
