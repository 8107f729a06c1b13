package transfer

import (
	"os"
	"slices"
	"testing"

	"github.com/bst-cache/bst-cache/cache"
)

func TestJournal(t *testing.T) {
	dir := t.TempDir()
	j, err := openJournal(dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	a, b, c, d := work{cache.KindBst1Artifact, "p/a/k"}, work{cache.KindBst1Artifact, "p/b/k"}, work{cache.KindSource, "p/c/k"}, work{cache.KindBst2Artifact, "p/d/k"}
	if dropped, err := j.add([]work{a, b, a}); err != nil || len(dropped) != 0 {
		t.Fatalf("add: %v, dropped %v", err, dropped)
	}
	if n, _ := j.depth(); n != 2 {
		t.Errorf("a ref queued twice: depth %d, want 2", n)
	}
	// Queued again while it moves: it moves again after.
	if got := j.take(1); !slices.Equal(got, []work{a}) {
		t.Fatalf("take %v, want the oldest, %v", got, a)
	}
	j.add([]work{a})
	j.finish(a)
	if got := j.take(5); !slices.Equal(got, []work{b, a}) {
		t.Fatalf("take %v, want %v then %v queued again", got, b, a)
	}
	j.retry(b)
	j.finish(a)
	// Replayed after a kill, oldest first; a half-written file is removed.
	os.WriteFile(dir+"/"+journalTmp+"x", []byte("bst1-artifact\np/"), 0o644)
	j.add([]work{c})
	j, err = openJournal(dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	if got := j.take(5); !slices.Equal(got, []work{b, c}) {
		t.Fatalf("replayed %v, want %v then %v", got, b, c)
	}
	if _, err := os.Stat(dir + "/" + journalTmp + "x"); !os.IsNotExist(err) {
		t.Errorf("a half-written entry was left: %v", err)
	}
	j.retry(b)
	j.retry(c)
	// Past the bound the oldest waiting entry goes.
	dropped, err := j.add([]work{a, d})
	if err != nil || !slices.Equal(dropped, []work{b}) {
		t.Errorf("past the bound: dropped %v (%v), want %v", dropped, err, b)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 3 {
		t.Errorf("%d files in the journal, want 3", len(ents))
	}
}
