package server

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// Room freed while a push's upload waits for it goes to that upload, not
// to the upload of a loose writer (a client that left blobs unnamed)
// arriving as it frees: under scripts/bench-load, loose writers uploading
// all the time took room pushes had waited for.
func TestQuotaWaitingPushBeforeLooseWriter(t *testing.T) {
	// A 200 KiB quota (210 KiB hard cap), leases for the hour.
	q, store := testAccount(t, 200<<10, time.Hour)
	n := 0
	put := func(who string) (digest.Digest, uint32) {
		t.Helper()
		n++
		b := make([]byte, 10<<10)
		copy(b, fmt.Sprint("blob ", n))
		d := digest.NewFromBlob(b)
		if err := store.PutBytes(d, b); err != nil {
			t.Fatal(err)
		}
		q.stored(d, who, time.Now())
		i, _ := q.find(d)
		return d, i
	}
	// The loose writer lost the lease on a blob it never named, and
	// eviction removed it.
	const loose, push = "127.0.0.1:1", "127.0.0.1:2"
	d, i := put(loose)
	q.mu.Lock()
	q.dropOldest(q.clients[loose], q.at(time.Now()))
	q.drop(i)
	q.mu.Unlock()
	if err := store.RemoveObject(d); err != nil {
		t.Fatal(err)
	}
	// The store at its hard cap, every object leased.
	var last uint32
	for range 21 {
		_, last = put("")
	}

	// The push's upload holds the room it is given until the end.
	type admitted struct {
		res *reservation
		err error
	}
	pushed := make(chan admitted, 1)
	go func() {
		res, err := q.admit(context.Background(), 10<<10, 0, push, new(time.Time))
		pushed <- admitted{res, err}
	}()
	for deadline := time.Now().Add(5 * time.Second); q.stats().Waiting == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the push's upload does not wait for room")
		}
	}
	// Room for one upload: a lease ends; the loose writer comes.
	q.mu.Lock()
	q.objs[last].upload = 0
	q.place(last, q.at(time.Now())) // as a lease trimmed
	q.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	res, err := q.admit(ctx, 10<<10, 0, loose, new(time.Time))
	if err == nil {
		res.release()
		t.Error("the loose writer's upload took the room the push's waited for")
	}
	select {
	case a := <-pushed:
		if a.err != nil {
			t.Errorf("the push's upload: %v", a.err)
		} else {
			a.res.release()
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the push's upload still waits")
	}
}

// Leases end by time, with nothing to say so: an upload waiting for room
// that a lease's end makes looks again when the lease ends, and is
// admitted then, not at the end of its wait (admitWait), as it was.
func TestQuotaWaitingUploadWakesWhenALeaseEnds(t *testing.T) {
	// A 200 KiB quota (210 KiB hard cap), full of blobs leased for a
	// second (filled by the server: no client's lease to end early).
	const lease = time.Second
	q, store := testAccount(t, 200<<10, lease)
	for n := range 21 {
		b := make([]byte, 10<<10)
		copy(b, fmt.Sprint("blob ", n))
		d := digest.NewFromBlob(b)
		if err := store.PutBytes(d, b); err != nil {
			t.Fatal(err)
		}
		q.stored(d, "", time.Now())
	}
	start := time.Now()
	res, err := q.admit(context.Background(), 10<<10, 0, "127.0.0.1:1", new(time.Time))
	took := time.Since(start)
	if err != nil {
		t.Fatalf("the upload was refused after %s: %v", took, err)
	}
	res.release()
	t.Logf("admitted after %s", took.Round(time.Millisecond))
	if took >= admitWait*3/4 {
		t.Errorf("the upload was admitted %s after it came, the leases that left no room ending %s after: want soon after they end", took.Round(time.Millisecond), lease)
	}
}

// A read lease bigger than the bound on read leases (a quarter of the
// quota) is kept, as the lease just taken is, while another client holds
// upload leases but no read lease: that one has no read lease to lose
// (the server ended a read lease it did not hold, and panicked).
func TestQuotaBigReadLeaseBesideAnUpload(t *testing.T) {
	q, _ := testAccount(t, 100<<10, time.Hour)
	now := time.Now()
	q.stored(digest.NewFromBlob([]byte("loose")), "127.0.0.1:1", now)
	big := make([]byte, 30<<10)
	d := digest.NewFromBlob(big)
	q.stored(d, "", now)
	q.lend([]digest.Digest{d}, "127.0.0.1:2", now)
	if st := q.stats(); st.ReadLeased != d.Size {
		t.Errorf("%d bytes under read leases, want the lease just taken: %d", st.ReadLeased, d.Size)
	}
}
