package transfer

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bst-cache/bst-cache/cache"
)

// With no format set (cache.KindArtifact), each cache is asked for a ref
// as both formats in one round, before the next cache is asked (no second
// pass over the caches for the other format); what a cache holds is
// pulled as that kind, into a store created only then, in the layout of
// that artifact.
func TestNoFormatAsksBothInOneRound(t *testing.T) {
	const ref = "demo/app/key"
	log := &lookupLog{}
	empty, holder := newFake("empty"), newFake("holder").holding(ref, artifact("one", "two"))
	empty.lookups, holder.lookups = log, log
	dir := filepath.Join(t.TempDir(), "store")
	store, err := cache.Open(dir, cache.KindArtifact)
	if err != nil {
		t.Fatal(err)
	}
	e := &Engine{Store: store, Kind: cache.KindArtifact, Caches: cacheOf(empty, holder), Jobs: 2}

	miss, _ := e.Pull(context.Background(), []string{"demo/none/key"}, PullOptions{})
	if miss[0].Status != StatusMissing {
		t.Errorf("a ref no cache has: %s (%s); want missing", miss[0].Status, miss[0].Reason)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("a pull that found nothing created the store: %v", err)
	}
	res, _ := e.Pull(context.Background(), []string{ref}, PullOptions{})
	if res[0].Status != StatusDone || res[0].Cache != "holder" {
		t.Fatalf("pull: %+v; want done from holder", res[0])
	}
	var asked []string
	for _, l := range log.entries {
		if strings.HasSuffix(l, " "+ref) {
			asked = append(asked, strings.TrimSuffix(l, " "+ref))
		}
	}
	if len(asked) != 4 {
		t.Fatalf("lookups %q; want 2 per cache", asked)
	}
	// Within a cache the two lookups run at once, in either order.
	slices.Sort(asked[:2])
	slices.Sort(asked[2:])
	want := []string{"empty FetchBlob", "empty FetchDirectory", "holder FetchBlob", "holder FetchDirectory"}
	if !slices.Equal(asked, want) {
		t.Errorf("lookups %q; want %q: both formats of one cache before the next, each once", asked, want)
	}
	if got := store.Layout(); got != cache.KindBst1Artifact {
		t.Errorf("the new store took the %q layout for a BuildStream 1 artifact", got)
	}
	if _, err := store.GetRef(cache.KindBst1Artifact, ref); err != nil {
		t.Errorf("the ref is not in BuildStream 1's refs: %v", err)
	}
}

// The kind of refs a command moves: its --kind read in the format set
// (cache.KindArtifact when none is: either).
func TestKindFor(t *testing.T) {
	for _, tc := range []struct {
		format, kind, want cache.Kind
	}{
		{cache.KindArtifact, cache.KindArtifact, cache.KindArtifact},
		{cache.KindArtifact, cache.KindSource, cache.KindSource},
		{cache.KindBst1Artifact, cache.KindArtifact, cache.KindBst1Artifact},
		{cache.KindBst1Artifact, cache.KindSource, ""},
		{cache.KindBst2Artifact, cache.KindArtifact, cache.KindBst2Artifact},
		{cache.KindBst2Artifact, cache.KindSource, cache.KindSource},
		{cache.KindBst2Artifact, cache.KindAsset, ""},
	} {
		got, err := KindFor(tc.format, tc.kind)
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("KindFor(%s, %s) = %q, %v; want %q", tc.format, tc.kind, got, err, tc.want)
		}
	}
}
