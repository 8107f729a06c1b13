package cache

import (
	"slices"
	"strings"
	"testing"

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
