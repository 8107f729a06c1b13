package server

import (
	"bytes"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
)

// A client's unnamed total counts each blob it left once: a push that
// lost the lease on a blob it uploaded, and sent it again after eviction
// removed it (as push does on FAILED_PRECONDITION MISSING), then names it
// in its ref, has left nothing unnamed; so has a push whose ref names a
// blob whose lease it lost before it was evicted. A client counting a blob
// twice would rank among the loose writers, whose leases go first, for
// as long as its connection lasts.
func TestQuotaBlobSentAgainCountsOnce(t *testing.T) {
	// A 4 KiB quota, and leases that run out at once.
	q, store := testAccount(t, 4<<10, time.Millisecond)
	const push = "127.0.0.1:1234"
	upload := func(b []byte) digest.Digest {
		t.Helper()
		d := digest.NewFromBlob(b)
		if err := store.PutBytes(d, b); err != nil {
			t.Fatal(err)
		}
		q.stored(d, push, time.Now())
		return d
	}
	unnamed := func() int64 {
		q.mu.Lock()
		defer q.mu.Unlock()
		if c := q.clients[push]; c != nil {
			return c.unnamed
		}
		return 0
	}

	// Lost and evicted, then sent again.
	lost := upload(bytes.Repeat([]byte("l"), 8<<10))
	time.Sleep(500 * time.Millisecond) // a lease lasts at least two eighths of a second
	_, gone := q.evictPass(time.Now(), 0)
	if len(gone) != 1 || gone[0] != lost {
		t.Fatalf("eviction planned to remove %v, want %v", gone, lost)
	}
	q.removeFiles(gone)
	if got := unnamed(); got != lost.Size {
		t.Fatalf("after the blob was evicted the push left %d bytes unnamed, want %d", got, lost.Size)
	}
	upload(bytes.Repeat([]byte("l"), 8<<10))
	if got := unnamed(); got != lost.Size {
		t.Errorf("after the push sent the lost blob again it left %d bytes unnamed, want %d (counted once)", got, lost.Size)
	}
	q.setRef(cache.KindBst1Artifact, "demo/a/1", []digest.Digest{lost}, time.Now())
	if got := unnamed(); got != 0 {
		t.Errorf("after its ref named the blob it sent again the push left %d bytes unnamed, want 0", got)
	}

	// Its lease lost (run out), not evicted, then named.
	kept := upload(bytes.Repeat([]byte("k"), 1<<10))
	time.Sleep(500 * time.Millisecond)
	q.mu.Lock()
	q.expire(q.clients[push], q.at(time.Now()))
	q.mu.Unlock()
	q.setRef(cache.KindBst1Artifact, "demo/b/1", []digest.Digest{kept}, time.Now())
	if got := unnamed(); got != 0 {
		t.Errorf("after its ref named a blob whose lease ran out the push left %d bytes unnamed, want 0", got)
	}
}

// testAccount is a server's quota account over an empty store, known, of
// limit bytes with leases of lease: the account alone, without the loop
// that evicts on its own.
func testAccount(t *testing.T, limit int64, lease time.Duration) (*quota, *cache.Store) {
	t.Helper()
	q, store := walkedAccount(t, limit, lease)
	q.know(time.Now(), q.useOrder())
	q.s.quota = q
	return q, store
}

// walkedAccount is testAccount once the start-up walk found the store
// empty, not known yet.
func walkedAccount(tb testing.TB, limit int64, lease time.Duration) (*quota, *cache.Store) {
	tb.Helper()
	store, err := cache.Open(tb.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := New(Options{Store: store, AllowWrites: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(srv.Close)
	<-srv.indexed
	q := newAccount()
	q.s, q.limit, q.lease, q.readLease = srv, limit, lease, lease
	q.walked <- nil
	if err := q.measure(measureReaders); err != nil {
		tb.Fatal(err)
	}
	return q, store
}
