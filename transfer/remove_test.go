package transfer

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/spool"
)

// Refs removed a batch at a time (rm) with one done set are reported as
// when removed at once: an artifact's other ref in a later batch is passed
// over, not reported missing (it is gone by then) or removed again; a dry
// run reports the same and removes nothing.
func TestRemoveInBatches(t *testing.T) {
	x, y := keyed("xs", "xw", "x1"), keyed("ys", "yw", "y1")
	refs := []string{"demo/x/xs", "demo/y/ys", "demo/x/xw", "demo/z/none", "demo/y/yw"}
	store := func(t *testing.T) *Engine {
		var warns []string
		e := newEngine(t, nil, false, &warns)
		for ref, a := range map[string]art{"demo/x/xs": x, "demo/x/xw": x, "demo/y/ys": y, "demo/y/yw": y} {
			for d, b := range a.blobs {
				e.Store.PutBytes(d, b)
			}
			if err := e.Store.SetRef(cache.KindArtifact, ref, buildstream.V1RefContent(a.root)); err != nil {
				t.Fatal(err)
			}
		}
		return e
	}
	left := func(e *Engine) []string {
		var out []string
		c := e.Store.Refs(cache.KindArtifact, "", "")
		for c.Next() {
			out = append(out, c.Name())
		}
		return out
	}
	for _, dryRun := range []bool{true, false} {
		once := store(t)
		want := once.Remove(context.Background(), refs, dryRun, spool.Seen{})
		batched := store(t)
		done := spool.Seen{}
		var got []Result
		for _, batch := range [][]string{refs[:2], refs[2:4], refs[4:]} {
			got = append(got, batched.Remove(context.Background(), batch, dryRun, done)...)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("dry run %v: results in batches (-at once +in batches):\n%s", dryRun, diff)
		}
		if len(got) != 3 || got[2].Status != StatusMissing {
			t.Errorf("dry run %v: %+v; want x and y removed with both refs, none missing", dryRun, got)
		}
		wantLeft := []string(nil)
		if dryRun {
			wantLeft = []string{"demo/x/xs", "demo/x/xw", "demo/y/ys", "demo/y/yw"}
		}
		if diff := cmp.Diff(wantLeft, left(batched)); diff != "" {
			t.Errorf("dry run %v: refs left (-want +got):\n%s", dryRun, diff)
		}
	}
}
