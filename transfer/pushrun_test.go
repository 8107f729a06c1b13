package transfer

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
)

// Refs naming one artifact (its strong and weak ref) and an artifact that
// shares a file with it, pushed at once: each blob goes to the target
// once and every ref is done. The first two FindMissingBlobs answer only
// once both are made, so the race that sent blobs twice happens every
// time: two refs told a blob is missing before either has sent it.
func TestPushMovesEachBlobOnce(t *testing.T) {
	shared := strings.Repeat("shared", 1000)
	x, y := artifact("x1", "x2", shared), artifact("y1", shared)
	target := newFake("target")
	var once sync.Once
	met := make(chan struct{})
	var mu sync.Mutex
	arrived := 0
	target.found = func() {
		mu.Lock()
		arrived++
		if arrived == 2 {
			once.Do(func() { close(met) })
		}
		mu.Unlock()
		select {
		case <-met:
		case <-time.After(time.Second): // a ref that waits for its carrier comes later
		}
	}
	var warns []string
	e := newEngine(t, nil, false, &warns)
	refs := map[string]art{"demo/x/strong": x, "demo/x/weak": x, "demo/y/key": y}
	for ref, a := range refs {
		for d, b := range a.blobs {
			e.Store.PutBytes(d, b)
		}
		if err := e.Store.SetRef(cache.KindArtifact, ref, buildstream.V1RefContent(a.root)); err != nil {
			t.Fatal(err)
		}
	}
	res, st := e.Push(context.Background(), []string{"demo/x/strong", "demo/x/weak", "demo/y/key"}, cacheOf(target), PushOptions{})
	for _, r := range res {
		if r.Status != StatusDone {
			t.Errorf("%s: %s (%s); want done", r.Ref, r.Status, r.Reason)
		}
	}
	for d, n := range target.sends {
		if n != 1 {
			t.Errorf("blob %s sent %d times", d, n)
		}
	}
	if want := int64(len(target.sends)); st.Pushed.Blobs != want {
		t.Errorf("pushed %d blobs counted, %d sent", st.Pushed.Blobs, want)
	}
}
