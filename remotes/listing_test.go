package remotes_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
)

// WalkRefs asks bst-cache serve for the next page as soon as a page
// comes, so that serve finds it while the last is handed out: fn, still
// at the first ref, sees serve answer the second page (in its access
// log). Asking only once a page was used up, it waited for each page in
// turn, and serve for the client.
func TestWalkRefsAsksAhead(t *testing.T) {
	const n = 1500 // two pages of serve's at most 1,000
	dir := storeWithRefs(t, n)
	alog := filepath.Join(t.TempDir(), "access.log")
	srv := testenv.StartServe(t, testenv.ServeOptions{Dir: dir, Args: []string{"--access-log", alog}})
	r := dial(t, cacheConfig("serve", srv.URL(), config.TypeAll))
	pages := func() int {
		data, _ := os.ReadFile(alog)
		return strings.Count(string(data), "ListRefs")
	}
	var got []string
	err := r.WalkRefs(context.Background(), []string{"bst1-artifact"}, "", func(ref remotes.ListedRef) error {
		if len(got) == 0 {
			for deadline := time.Now().Add(time.Minute); pages() < 2; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					return errors.New("the second page was not asked for while the first was handed out")
				}
			}
		}
		if ref.Digest != digest.Empty.String() {
			t.Errorf("%s names %q", ref.Name, ref.Digest)
		}
		got = append(got, ref.Name)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n || !slices.IsSorted(got) {
		t.Errorf("%d refs listed, from %v; want %d in order", len(got), got[:min(len(got), 3)], n)
	}
}

// A walk that ends early (fn's error) ends the page it asked for ahead,
// and says fn's error.
func TestWalkRefsEndsEarly(t *testing.T) {
	dir := storeWithRefs(t, 1200)
	srv := testenv.StartServe(t, testenv.ServeOptions{Dir: dir})
	r := dial(t, cacheConfig("serve", srv.URL(), config.TypeAll))
	stop := errors.New("enough")
	n := 0
	err := r.WalkRefs(context.Background(), []string{"bst1-artifact"}, "", func(remotes.ListedRef) error {
		if n++; n == 10 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 10 {
		t.Errorf("after %d refs: %v; want fn's error after 10", n, err)
	}
}

// storeWithRefs is a store of n BuildStream 1 refs.
func storeWithRefs(t *testing.T, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	store, err := cache.Open(dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WriteRefs(t, store, n/2)
	return dir
}
