package transfer

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// The artifacts of a pull that finish close together write their refs
// with one sync of the store (issue 21: a pull's CPU per GB; a pull of
// 560 small artifacts made 395 syncs): 48 artifacts from serve with 4
// jobs need a few syncs, not one for each artifact or two.
func TestPulledArtifactsShareSyncs(t *testing.T) {
	const n = 48
	dir := filepath.Join(t.TempDir(), "repo")
	src, err := cache.Open(dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for i := range n {
		a := artifact(fmt.Sprintf("one %d", i), fmt.Sprintf("two %d", i), fmt.Sprintf("three %d", i))
		for _, b := range a.blobs {
			if _, err := src.Add(b); err != nil {
				t.Fatal(err)
			}
		}
		ref := fmt.Sprintf("demo/e%d/key", i)
		if err := src.SetRef(cache.KindBst1Artifact, ref, buildstream.V1RefContent(a.root)); err != nil {
			t.Fatal(err)
		}
		refs = append(refs, ref)
	}
	srv := testenv.StartServe(t, testenv.ServeOptions{Dir: dir})
	c := NewCaches([]config.Cache{{
		Name: "serve", URL: srv.URL(), Type: config.TypeAll, MaxConcurrency: 4,
		Endpoint:   config.Endpoint{Target: srv.Addr},
		Connection: config.Connection{ConnectTimeout: 5 * time.Second, RequestTimeout: 30 * time.Second, RetryDelay: 20 * time.Millisecond},
	}}, 0)[0]
	t.Cleanup(func() { Close([]*Cache{c}) })
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	e := &Engine{Store: store, Kind: cache.KindBst1Artifact, Caches: []*Cache{c}, Jobs: 4}
	start := time.Now()
	results, _ := e.Pull(context.Background(), refs, PullOptions{})
	for _, r := range results {
		if r.Status != StatusDone {
			t.Fatalf("pull: %+v", r)
		}
		if _, err := store.GetRef(cache.KindBst1Artifact, r.Ref); err != nil {
			t.Errorf("%s: %v", r.Ref, err)
		}
	}
	syncs := store.Syncs()
	t.Logf("%d artifacts in %v: %d syncs", n, time.Since(start).Round(time.Millisecond), syncs)
	if syncs > n/6 {
		t.Errorf("%d artifacts pulled made %d syncs of the store, want at most %d", n, syncs, n/6)
	}
}
