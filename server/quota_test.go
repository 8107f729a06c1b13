package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/remotes"
	"github.com/bst-cache/bst-cache/server"
)

// Over its quota the server evicts the least recently used ref whole and
// keeps every object a remaining ref needs.
func TestQuotaEvictsLeastRecentlyUsedRef(t *testing.T) {
	addr, store, _ := startServer(t, server.Options{AllowWrites: true, Quota: 80 << 10, Lease: 300 * time.Millisecond})
	r := dialRemote(t, addr)
	ctx := context.Background()
	shared := bytes.Repeat([]byte("s"), 10<<10)
	refs := map[string]digest.Digest{}
	unique := map[string]digest.Digest{}
	push := func(name string, fill byte) {
		t.Helper()
		own := bytes.Repeat([]byte{fill}, 30<<10)
		root, blobs := artifactTree(map[string][]byte{"own": own, "shared": shared})
		if _, _, err := r.Upload(ctx, slices.Collect(maps.Keys(blobs)), remotes.MemoryOpener(blobs), 4); err != nil {
			t.Fatal(err)
		}
		if err := r.PushDirectory(ctx, []string{buildstream.URNBst1Artifact + name}, root); err != nil {
			t.Fatal(err)
		}
		refs[name], unique[name] = root, digest.NewFromBlob(own)
	}
	push("demo/a/1", 'a')
	push("demo/b/1", 'b')
	time.Sleep(500 * time.Millisecond)                                                       // past the lease of a's and b's blobs, longer than a push
	if _, err := r.FetchDirectory(ctx, buildstream.URNBst1Artifact+"demo/a/1"); err != nil { // a is now more recent than b
		t.Fatal(err)
	}
	push("demo/c/1", 'c')

	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := r.FetchDirectory(ctx, buildstream.URNBst1Artifact+"demo/b/1")
		if errors.Is(err, remotes.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b was not evicted: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ok, _ := store.Has(unique["demo/b/1"]); ok {
		t.Error("the evicted ref's own blob is still stored")
	}
	for _, name := range []string{"demo/a/1", "demo/c/1"} {
		got, err := r.FetchDirectory(ctx, buildstream.URNBst1Artifact+name)
		if err != nil || got != refs[name] {
			t.Errorf("%s after eviction: %v, %v", name, got, err)
		}
		if _, missing, err := store.Closure(refs[name]); err != nil || len(missing) > 0 {
			t.Errorf("%s lost blobs to eviction: %v %v", name, missing, err)
		}
	}
}

// A client told a blob is present may name it after another client's push
// that names it too has ended: that push must not end the first client's
// lease. (A blob every push shares was evicted between one client's
// FindMissingBlobs and its PushDirectory, under load.)
func TestQuotaKeepsBlobsAnotherClientWasToldOf(t *testing.T) {
	addr, _, _ := startServer(t, server.Options{AllowWrites: true, Quota: 100 << 10, Lease: time.Hour})
	a, b := dialRemote(t, addr), dialRemote(t, addr)
	ctx := context.Background()
	shared := bytes.Repeat([]byte("shared"), 5<<10)
	push := func(name string, files map[string][]byte) {
		t.Helper()
		root, blobs := artifactTree(files)
		if _, _, err := a.Upload(ctx, slices.Collect(maps.Keys(blobs)), remotes.MemoryOpener(blobs), 4); err != nil {
			t.Fatal(err)
		}
		if err := a.PushDirectory(ctx, []string{buildstream.URNBst1Artifact + name}, root); err != nil {
			t.Fatal(err)
		}
	}
	push("demo/first/1", map[string][]byte{"shared": shared, "own": bytes.Repeat([]byte("1"), 20<<10)})
	// b is told the shared blob is there, and will name it.
	sd := digest.NewFromBlob(shared)
	if missing, err := b.FindMissing(ctx, []digest.Digest{sd}); err != nil || len(missing) > 0 {
		t.Fatalf("FindMissing: %v, %v", missing, err)
	}
	// a names it in a second push, whose end ends a's lease on it.
	push("demo/second/1", map[string][]byte{"shared": shared, "own": bytes.Repeat([]byte("2"), 20<<10)})
	// Pressure: pushes of other content evict both refs.
	for i := range 4 {
		push(fmt.Sprintf("demo/filler/%d", i), map[string][]byte{"own": bytes.Repeat([]byte{byte(i)}, 30<<10)})
	}
	for _, ref := range []string{"demo/first/1", "demo/second/1"} {
		deadline := time.Now().Add(10 * time.Second)
		for _, err := a.FetchDirectory(ctx, buildstream.URNBst1Artifact+ref); !errors.Is(err, remotes.ErrNotFound); _, err = a.FetchDirectory(ctx, buildstream.URNBst1Artifact+ref) {
			if time.Now().After(deadline) {
				t.Fatalf("%s was not evicted: %v", ref, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// b sends what it was told is missing, and names the shared blob.
	root, blobs := artifactTree(map[string][]byte{"shared": shared})
	delete(blobs, sd)
	if err := b.BatchUpdate(ctx, blobs); err != nil {
		t.Fatal(err)
	}
	if err := b.PushDirectory(ctx, []string{buildstream.URNBst1Artifact + "demo/third/1"}, root); err != nil {
		t.Errorf("b names the blob it was told is present: %v", err)
	}
}
