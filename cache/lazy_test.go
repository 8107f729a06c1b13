package cache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// A store is made by its first write, in the layout Settle gave it, and a
// shared lock asked for before then is taken by that write: a gc (an
// exclusive lock) waits for it.
func TestStoreMadeByFirstWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	s, err := Open(dir, KindArtifact)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := s.Lock(context.Background(), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := s.ListRefs(KindArtifact, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("opening, locking and listing created the store: %v", err)
	}
	if got := s.Settle(KindBst1Artifact); got != KindBst1Artifact {
		t.Fatalf("Settle gave %q", got)
	}
	if got := s.Settle(KindBst2Artifact); got != KindBst1Artifact {
		t.Errorf("a second Settle changed the layout to %q", got)
	}
	d, err := s.Add([]byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cas", "objects", d.Hash[:2], d.Hash[2:])); err != nil {
		t.Errorf("the first blob is not in BuildStream 1's layout: %v", err)
	}
	gc, err := Open(dir, KindBst2Artifact)
	if err != nil {
		t.Fatal(err)
	}
	if gc.Layout() != KindBst1Artifact {
		t.Errorf("reopened as %q", gc.Layout())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := gc.Lock(ctx, true, nil); err == nil {
		t.Error("an exclusive lock was granted while the writer holds its shared one")
	}
}

// ListRefs(KindArtifact) lists both BuildStreams' artifacts, each with
// its kind, whatever the layout.
func TestListRefsBothFormats(t *testing.T) {
	s := openTemp(t, KindBst2Artifact)
	if err := s.SetRef(KindBst1Artifact, "p/one/1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRef(KindBst2Artifact, "p/two/2", []byte("y")); err != nil {
		t.Fatal(err)
	}
	infos, err := s.ListRefs(KindArtifact, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].Name != "p/one/1" || infos[0].Kind != KindBst1Artifact || infos[1].Kind != KindBst2Artifact {
		t.Errorf("ListRefs(artifact) = %+v; want both, with their kinds", infos)
	}
}

// Two processes making one new store, each about to write in another
// layout (a bst1 pull and a bst2 pull, or a configured format and a
// settled one): the second takes the layout the first made, so every
// object is in the one objects directory the store is later read from.
func TestNewStoreOneLayoutForAllWriters(t *testing.T) {
	for _, tc := range []struct {
		name   string
		a, b   Kind
		settle bool
	}{
		{"configured", KindBst1Artifact, KindBst2Artifact, false},
		{"settled", KindArtifact, KindArtifact, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "store")
			a, err := Open(dir, tc.a)
			if err != nil {
				t.Fatal(err)
			}
			b, err := Open(dir, tc.b)
			if err != nil {
				t.Fatal(err)
			}
			if tc.settle {
				a.Settle(KindBst1Artifact)
				b.Settle(KindBst2Artifact)
			}
			da, err := a.Add([]byte("from a"))
			if err != nil {
				t.Fatal(err)
			}
			db, err := b.Add([]byte("from b"))
			if err != nil {
				t.Fatal(err)
			}
			if a.Layout() != b.Layout() {
				t.Errorf("writers of one store use layouts %q and %q", a.Layout(), b.Layout())
			}
			later, err := Open(dir, KindArtifact)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range []struct {
				who string
				d   digest.Digest
			}{{"a", da}, {"b", db}} {
				if ok, err := later.Has(d.d); !ok || err != nil {
					t.Errorf("the store (%s layout) lacks the object %s wrote: %v", later.Layout(), d.who, err)
				}
			}
		})
	}
}

// A store that exists but was never written by bst-cache (a
// bst-artifact-server directory, bst 1.6's cache: no tmp/) is locked at
// once by a transfer, not at its first write: a gc must not run while the
// transfer reads what the store holds.
func TestSharedLockOnExistingStoreWithoutTmp(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "cas", "objects"), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, KindArtifact)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := s.Lock(context.Background(), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	gc, err := Open(dir, KindArtifact)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if unlockGC, err := gc.Lock(ctx, true, nil); err == nil {
		unlockGC()
		t.Error("a gc locked the store while a transfer held its shared lock")
	}
}

// The shared lock a transfer asked for before the store existed is taken
// by its first write with the transfer's context and waiting callback: a
// gc holding the store makes it say it waits, and Ctrl-C ends the wait.
func TestDeferredLockWaitsAsAsked(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	s, err := Open(dir, KindArtifact)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waited := make(chan struct{}, 1)
	unlock, err := s.Lock(ctx, false, func() { waited <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	// Another process makes the store, and a gc takes it.
	other, err := Open(dir, KindArtifact)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Add([]byte("other")); err != nil {
		t.Fatal(err)
	}
	unlockGC, err := other.Lock(context.Background(), true, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unlockGC()
	done := make(chan error, 1)
	go func() {
		_, err := s.Add([]byte("mine"))
		done <- err
	}()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("the first write waited for the gc without saying so")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the first write, interrupted while it waited for a gc: %v; want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an interrupted run still waits for the gc")
	}
}
