package cache

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// walked collects what a cursor names.
func walked(t *testing.T, c *RefCursor) []string {
	t.Helper()
	var got []string
	for c.Next() {
		got = append(got, string(c.Kind())+":"+c.Name())
	}
	if err := c.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// A walk names refs in the byte order of their whole names ("a-c" before
// "a/b": '-' sorts before '/'), both BuildStreams' merged, from after a
// token and under a prefix.
func TestRefsCursorOrder(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	v1 := []string{"a/b", "a-c", "a/b0/x", "a.d/e", "b", "ab/c/d", "p/q/1", "p/q/2", "p/qr/1"}
	for _, r := range v1 {
		if err := s.SetRef(KindBst1Artifact, r, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []string{"a/b1", "p/q/15"} {
		if err := s.SetRef(KindBst2Artifact, r, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	var want []string
	for _, r := range v1 {
		want = append(want, "bst1-artifact:"+r)
	}
	want = append(want, "bst2-artifact:a/b1", "bst2-artifact:p/q/15")
	slices.SortFunc(want, func(a, b string) int {
		return strings.Compare(a[strings.Index(a, ":")+1:], b[strings.Index(b, ":")+1:])
	})
	if diff := cmp.Diff(want, walked(t, s.Refs(KindArtifact, "", ""))); diff != "" {
		t.Errorf("the whole walk (-want +got):\n%s", diff)
	}
	for i := range want {
		after := want[i][strings.Index(want[i], ":")+1:]
		if diff := cmp.Diff(want[i+1:], walked(t, s.Refs(KindArtifact, "", after)), cmpEmpty); diff != "" {
			t.Errorf("after %s (-want +got):\n%s", after, diff)
		}
	}
	for prefix, w := range map[string][]string{
		"p/q":   {"bst1-artifact:p/q/1", "bst2-artifact:p/q/15", "bst1-artifact:p/q/2"},
		"a/b":   {"bst1-artifact:a/b"},
		"a/b/c": nil,
		"zz":    nil,
		"../x":  nil,
	} {
		if diff := cmp.Diff(w, walked(t, s.Refs(KindArtifact, prefix, "")), cmpEmpty); diff != "" {
			t.Errorf("under %s (-want +got):\n%s", prefix, diff)
		}
	}
	if diff := cmp.Diff([]string{"bst1-artifact:p/q/2"}, walked(t, s.Refs(KindArtifact, "p/q", "p/q/15"))); diff != "" {
		t.Errorf("under p/q after p/q/15 (-want +got):\n%s", diff)
	}
}

var cmpEmpty = cmp.Transformer("empty", func(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
})

// A walk WithRefData gives each ref as ReadRef reads it, whether it
// starts at the top, at a prefix that is a directory or one that is a
// ref, and only the refs a glob matches.
func TestRefsWithRefData(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	refs := []string{"a/b", "a/bc/1", "a/bc/2", "a/bd/c", "p/q/1", "p/q/r/2"}
	for i, r := range refs {
		if err := s.SetRef(KindBst1Artifact, r, []byte(strings.Repeat("x", i+1))); err != nil {
			t.Fatal(err)
		}
	}
	read := func(c *RefCursor) []string {
		t.Helper()
		var got []string
		for c.Next() {
			data, info, err := c.Data()
			if err != nil {
				t.Fatalf("%s: %v", c.Name(), err)
			}
			want, wantInfo, err := s.ReadRef(c.Kind(), c.Name())
			if err != nil {
				t.Fatal(err)
			}
			// Not Accessed: reading a ref may move it.
			wantInfo.Kind, wantInfo.Accessed, info.Accessed = "", time.Time{}, time.Time{}
			if string(data) != string(want) || info != wantInfo {
				t.Errorf("%s: walked %q %+v, ReadRef %q %+v", c.Name(), data, info, want, wantInfo)
			}
			got = append(got, c.Name())
		}
		if err := c.Err(); err != nil {
			t.Fatal(err)
		}
		return got
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", refs},
		{"a/b", []string{"a/b"}},
		{"a/bc", []string{"a/bc/1", "a/bc/2"}},
		{"p", []string{"p/q/1", "p/q/r/2"}},
	} {
		if diff := cmp.Diff(tc.want, read(s.Refs(KindArtifact, tc.prefix, "", WithRefData()))); diff != "" {
			t.Errorf("under %q (-want +got):\n%s", tc.prefix, diff)
		}
	}
	c, err := s.MatchRefs(KindArtifact, "a/*c*", WithRefData())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a/bc/1", "a/bc/2", "a/bd/c"}, read(c)); diff != "" {
		t.Errorf("a/*c* (-want +got):\n%s", diff)
	}
}

// A walk dropped halfway leaves nothing behind: its readers end and the
// directories it held open are closed once it is collected.
func TestRefsDroppedWalk(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	writeRefFiles(t, s, 2*readAhead)
	fds := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skip(err)
		}
		return len(entries)
	}
	goroutines, open := runtime.NumGoroutine(), fds()
	c := s.Refs(KindArtifact, "", "", WithRefData())
	for range 3 {
		if !c.Next() {
			t.Fatal(c.Err())
		}
	}
	c = nil
	deadline := time.Now().Add(30 * time.Second)
	for runtime.NumGoroutine() > goroutines || fds() > open {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines and %d files open, %d and %d before the walk", runtime.NumGoroutine(), fds(), goroutines, open)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkRefsWalk walks 20,000 refs (2 an artifact, as BuildStream keeps
// them) by name and WithRefData.
func BenchmarkRefsWalk(b *testing.B) {
	s, err := Open(b.TempDir(), KindBst1Artifact)
	if err != nil {
		b.Fatal(err)
	}
	const artifacts = 10_000
	writeRefFiles(b, s, artifacts)
	for _, bc := range []struct {
		name string
		opts []RefsOption
	}{{"names", nil}, {"data", []RefsOption{WithRefData()}}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				c := s.Refs(KindArtifact, "", "", bc.opts...)
				n := 0
				for c.Next() {
					n++
				}
				if c.Err() != nil || n != 2*artifacts {
					b.Fatalf("%d refs walked: %v", n, c.Err())
				}
			}
		})
	}
}

// writeRefFiles writes the refs of n artifacts, strong and weak
// (bench/eNNNNN/KEY, as BuildStream and scripts/genrefs keep them),
// straight into a store's ref directory: a walk reads refs, not what they
// name.
func writeRefFiles(t testing.TB, s *Store, n int) {
	t.Helper()
	root, err := s.refDir(KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		dir := filepath.Join(root, "bench", fmt.Sprintf("e%05d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{fmt.Sprintf("%064x", 2*i), fmt.Sprintf("%064x", 2*i+1)} {
			if err := os.WriteFile(filepath.Join(dir, key), []byte("a ref"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A directory of more than partRefs entries is read in parts: a walk names
// each of its refs once, in order, WithRefData or not, from the start or
// after a token inside a part, under a prefix, with subdirectories among
// the refs; and what it holds read ahead stays bounded: a walk of an
// element with 3.5 parts of keys holds at most a part and what aheadRefs
// allows, not every key.
func TestRefsBigDirectoryInParts(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	n := 3*partRefs + partRefs/2
	root, err := s.refDir(KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range n + 1 {
		// Written out of order; a few subdirectories among the keys.
		ref := fmt.Sprintf("p/el/%064x", i*7919%n)
		switch {
		case i == n:
			ref = "p/z"
		case i%1000 == 0:
			ref = fmt.Sprintf("p/el/d%063x/sub", i)
		}
		p := filepath.Join(root, filepath.FromSlash(ref))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(ref), 0o644); err != nil {
			t.Fatal(err)
		}
		want = append(want, ref)
	}
	slices.Sort(want)
	names := func(c *RefCursor, data bool) []string {
		t.Helper()
		var got []string
		for c.Next() {
			if data {
				if d, _, err := c.Data(); err != nil || string(d) != c.Name() {
					t.Fatalf("%s: data %q, %v", c.Name(), d, err)
				}
			}
			got = append(got, c.Name())
		}
		if err := c.Err(); err != nil {
			t.Fatal(err)
		}
		return got
	}
	for _, data := range []bool{false, true} {
		var opts []RefsOption
		if data {
			opts = append(opts, WithRefData())
		}
		if diff := cmp.Diff(want, names(s.Refs(KindArtifact, "", "", opts...), data)); diff != "" {
			t.Errorf("data %v: the whole walk (-want +got):\n%s", data, diff)
		}
		for _, at := range []int{0, partRefs - 1, partRefs, partRefs + 17, 2*partRefs + 3, n - 1} {
			if diff := cmp.Diff(want[at+1:], names(s.Refs(KindArtifact, "p", want[at], opts...), data), cmpEmpty); diff != "" {
				t.Errorf("data %v: under p after %s (-want +got):\n%s", data, want[at], diff)
			}
		}
	}
	// Held by the walk: read ahead, and the parts of the frames.
	c := s.Refs(KindArtifact, "", "", WithRefData())
	most := 0
	for c.Next() {
		w := c.cur
		w.mu.Lock()
		held := w.ahead
		w.mu.Unlock()
		for _, f := range w.stack {
			held += len(f.entries)
		}
		most = max(most, held)
	}
	if bound := aheadRefs + (walkReaders+2)*partRefs; most > bound {
		t.Errorf("a walk of %d refs in one directory held %d entries at once; want at most %d", n, most, bound)
	}
}
