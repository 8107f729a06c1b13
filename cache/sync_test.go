package cache

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// countSyncs makes syncfs count its calls, each first waiting for
// before (when set), and fail with fail (when set).
func countSyncs(t *testing.T, before func(n int64), fail error) *atomic.Int64 {
	t.Helper()
	var calls atomic.Int64
	orig := syncfs
	syncfs = func(fd int) error {
		n := calls.Add(1)
		if before != nil {
			before(n)
		}
		if fail != nil {
			return fail
		}
		return orig(fd)
	}
	t.Cleanup(func() { syncfs = orig })
	return &calls
}

// Artifacts whose refs are written at once share the sync of the file
// system (issue 21: a pull's CPU per GB): the first sync is held until
// every writer has written its refs' temporary files and waits for one,
// and then the writers need one more in all, not one each.
func TestRefsWrittenAtOnceShareSyncs(t *testing.T) {
	const writers = 16
	s := openTemp(t, KindBst1Artifact)
	if err := s.SetRef(KindArtifact, "made/first", []byte("x")); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	calls := countSyncs(t, func(n int64) {
		if n == 1 {
			<-release
		}
	}, nil)
	errs := make(chan error, writers)
	for i := range writers {
		go func() {
			refs := []string{fmt.Sprintf("p/e%d/strong", i), fmt.Sprintf("p/e%d/weak", i)}
			errs <- s.SetRefs(KindArtifact, refs, []byte("content"))
		}()
	}
	// Writers that do not wait for it sync on their own (a second sync
	// while the first is held), and need not be waited for.
	for deadline := time.Now().Add(time.Minute); len(tmpEntries(t, s)) < 2*writers && calls.Load() < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("%d temporary files after a minute, want %d", len(tmpEntries(t, s)), 2*writers)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d writers at once: %d syncs", writers, calls.Load())
	if got := calls.Load(); got > writers/2 {
		t.Errorf("%d writers at once made %d syncs, want at most %d", writers, got, writers/2)
	}
	for i := range writers {
		for _, ref := range []string{fmt.Sprintf("p/e%d/strong", i), fmt.Sprintf("p/e%d/weak", i)} {
			if got, err := s.GetRef(KindArtifact, ref); err != nil || string(got) != "content" {
				t.Errorf("%s: %q, %v", ref, got, err)
			}
		}
	}
	if left := tmpEntries(t, s); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// A sync that fails fails every writer that shares it, and none of their
// refs is written.
func TestFailedSyncFailsEveryWriter(t *testing.T) {
	s := openTemp(t, KindBst1Artifact)
	if err := s.SetRef(KindArtifact, "made/first", []byte("x")); err != nil {
		t.Fatal(err)
	}
	broken := errors.New("the disk is gone")
	countSyncs(t, nil, broken)
	errs := make(chan error, 8)
	for i := range 8 {
		go func() { errs <- s.SetRef(KindArtifact, fmt.Sprintf("p/e%d", i), []byte("content")) }()
	}
	for range 8 {
		if err := <-errs; !errors.Is(err, broken) {
			t.Errorf("SetRef: %v, want %v", err, broken)
		}
	}
	for i := range 8 {
		if _, err := s.GetRef(KindArtifact, fmt.Sprintf("p/e%d", i)); !errors.Is(err, ErrNotFound) {
			t.Errorf("p/e%d after a failed sync: %v, want not found", i, err)
		}
	}
	if left := tmpEntries(t, s); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// WriteRefs writes many artifacts' refs with one sync of the file system
// (issue 21: a pull's artifacts finishing together share it), made once
// every write's temporary files are written and before any ref gets its
// name; a write that fails leaves the others be.
func TestWriteRefsSyncsOnce(t *testing.T) {
	const writes = 20
	s := openTemp(t, KindBst1Artifact)
	if err := s.SetRef(KindArtifact, "made/first", []byte("x")); err != nil {
		t.Fatal(err)
	}
	var ws []RefWrite
	for i := range writes {
		ws = append(ws, RefWrite{Kind: KindArtifact, Refs: []string{fmt.Sprintf("p/e%d/strong", i), fmt.Sprintf("p/e%d/weak", i)}, Data: []byte("content")})
	}
	ws[7].Refs[1] = "p/../escape" // not a valid ref: that write fails alone
	calls := countSyncs(t, func(int64) {
		if n := len(tmpEntries(t, s)); n != 2*(writes-1) {
			t.Errorf("the sync began with %d temporary files, want %d", n, 2*(writes-1))
		}
		if _, err := s.GetRef(KindArtifact, "p/e0/strong"); !errors.Is(err, ErrNotFound) {
			t.Errorf("a ref was written before the sync: %v", err)
		}
	}, nil)
	errs := s.WriteRefs(ws)
	if got := calls.Load(); got != 1 {
		t.Errorf("%d writes made %d syncs, want 1", writes, got)
	}
	for i, err := range errs {
		if (err != nil) != (i == 7) {
			t.Errorf("write %d: %v", i, err)
		}
		for _, ref := range ws[i].Refs {
			got, err := s.GetRef(KindArtifact, ref)
			switch {
			case i == 7 && err == nil:
				t.Errorf("%s of the failed write was written", ref)
			case i != 7 && (err != nil || string(got) != "content"):
				t.Errorf("%s: %q, %v", ref, got, err)
			}
		}
	}
	if left := tmpEntries(t, s); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
