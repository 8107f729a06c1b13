package cache

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A store is made by its first write, in the layout Settle gave it, and a
// shared lock asked for before then is taken by that write: a gc (an
// exclusive lock) waits for it.
func TestStoreMadeByFirstWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	s, err := Open(dir, "")
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
	if got := s.Settle(LayoutBst1); got != LayoutBst1 {
		t.Fatalf("Settle gave %q", got)
	}
	if got := s.Settle(LayoutBst2); got != LayoutBst1 {
		t.Errorf("a second Settle changed the layout to %q", got)
	}
	d, err := s.Add([]byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cas", "objects", d.Hash[:2], d.Hash[2:])); err != nil {
		t.Errorf("the first blob is not in BuildStream 1's layout: %v", err)
	}
	gc, err := Open(dir, LayoutBst2)
	if err != nil {
		t.Fatal(err)
	}
	if gc.Layout() != LayoutBst1 {
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
	s := openTemp(t, LayoutBst2)
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
