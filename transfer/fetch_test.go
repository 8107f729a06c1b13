package transfer

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/server"
)

// serveStore serves a fresh store holding blobs with serve's own server,
// in this process, and returns it as a configured cache.
func serveStore(t *testing.T, blobs ...[]byte) *Cache {
	t.Helper()
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blobs {
		if _, err := store.Add(b); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := server.New(server.Options{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := server.NewGRPC(srv, server.GRPCOptions{})
	go g.Serve(l)
	t.Cleanup(func() { g.Stop(); srv.Close() })
	addr := l.Addr().String()
	return NewCaches([]config.Cache{{
		Name: "serve", URL: "http://" + addr, Type: config.TypeAll, MaxConcurrency: 4,
		Endpoint:   config.Endpoint{Target: addr},
		Connection: config.Connection{ConnectTimeout: 5 * time.Second, RequestTimeout: 30 * time.Second, RetryDelay: 50 * time.Millisecond},
	}}, 0)[0]
}

// A blob another ref claimed while asking a cache that lacked it is
// fetched by the waiting ref from its own cache once the claim is
// released, for batched and streamed blobs alike.
func TestWaiterFetchesAfterAFailedClaim(t *testing.T) {
	small := []byte("shared by two refs")
	large := bytes.Repeat([]byte("large shared blob "), 1<<18) // streamed
	c := serveStore(t, small, large)
	defer Close([]*Cache{c})
	local, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	f := newFetcher(local, []*Cache{c}, false, Events{}, nil)
	want := []digest.Digest{digest.NewFromBlob(small), digest.NewFromBlob(large)}
	for _, d := range want {
		if mine, _ := f.flights.claim(d); !mine {
			t.Fatal("claim failed")
		}
	}
	type result struct {
		missing []digest.Digest
		err     error
	}
	done := make(chan result, 1)
	go func() {
		missing, err := f.fetch(context.Background(), want, nil, nil)
		done <- result{missing, err}
	}()
	// The other ref gives up on its cache without storing anything.
	time.Sleep(200 * time.Millisecond)
	f.flights.release(want...)
	select {
	case r := <-done:
		if r.err != nil || len(r.missing) > 0 {
			t.Fatalf("fetch after the claim was released: missing %v, %v", r.missing, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiter never finished")
	}
	for _, d := range want {
		if ok, _ := local.Has(d); !ok {
			t.Errorf("%v was not fetched by the waiter", d)
		}
	}
}

// Two refs sharing hundreds of blobs, claimed in opposite orders with a
// max-concurrency of 1, both finish (issue 18). Each ref's list starts
// with blobs only it has, then two blobs held by a third party (the
// test): the ref is stopped there until every other blob is claimed by
// one of the two, as on a busy machine. A fetcher that waits for others'
// claims while it holds claims it has not started downloading deadlocks
// here for good.
func TestOppositeOrdersDoNotDeadlock(t *testing.T) {
	const shared = 300
	var blobs [][]byte
	var a, b, gates []digest.Digest
	for i := range shared {
		blob := []byte(fmt.Sprintf("blob %d of both refs", i))
		blobs = append(blobs, blob)
		a = append(a, digest.NewFromBlob(blob))
	}
	b = slices.Clone(a)
	slices.Reverse(b)
	for i := range 4 {
		blob := []byte(fmt.Sprintf("gate %d", i))
		blobs = append(blobs, blob)
		gates = append(gates, digest.NewFromBlob(blob))
	}
	// Ref A: the first half, its gates, then the second half; ref B the
	// same from the other end.
	orderA := slices.Concat(a[:shared/2], gates[:2], a[shared/2:])
	orderB := slices.Concat(b[:shared/2], gates[2:], b[shared/2:])

	c := serveStore(t, blobs...)
	c.Config.MaxConcurrency = 1
	defer Close([]*Cache{c})
	local, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	f := newFetcher(local, []*Cache{c}, false, Events{}, nil)
	for _, d := range gates {
		if mine, _ := f.flights.claim(d); !mine {
			t.Fatal("claim failed")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := make(chan error, 2)
	for _, order := range [][]digest.Digest{orderA, orderB} {
		go func() {
			missing, err := f.fetch(ctx, order, nil, nil)
			if err == nil && len(missing) > 0 {
				err = fmt.Errorf("%d blobs missing", len(missing))
			}
			errs <- err
		}()
	}
	// Wait until both refs have claimed their first halves (or, with
	// a fetcher that does not stop there, a while), then let them go on.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		f.flights.mu.Lock()
		n := len(f.flights.m)
		f.flights.mu.Unlock()
		if n == shared+len(gates) {
			break
		}
	}
	f.flights.release(gates...)
	for range 2 {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("deadlock: two refs sharing blobs in opposite orders never finished")
		}
	}
	for _, blob := range blobs {
		if ok, _ := local.Has(digest.NewFromBlob(blob)); !ok {
			t.Fatalf("%q was not fetched", blob)
		}
	}
}

// A batch that holds the run's whole budget of bytes in flight and is
// refused as too large streams its blobs: the batch's share is given back
// first, or each stream would wait for it for ever (issue 18).
func TestTooLargeBatchStreamsWithinTheBudget(t *testing.T) {
	fake := newFake("big-batches")
	fake.batchTooLarge = true
	fake.maxBatch = 2 * inflightBytes // all in one batch, refused
	var want []digest.Digest
	for i := range inflightBytes>>20 + 8 {
		blob := bytes.Repeat([]byte{byte(i)}, 1<<20)
		d := digest.NewFromBlob(blob)
		fake.blobs[d] = blob
		want = append(want, d)
	}
	local, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	f := newFetcher(local, cacheOf(fake), false, Events{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	missing, err := f.fetch(ctx, want, nil, nil)
	if err != nil || len(missing) > 0 {
		t.Fatalf("fetch: %d missing, %v (a deadline here is the batch waiting for its own share)", len(missing), err)
	}
}

// A blob fetched is looked up in the store once (issue 21: a pull's CPU
// per GB; each was looked up before it was claimed and again when
// claimed), and once more only when its ref waited for a slot, during
// which other refs store blobs: one stored then is not downloaded again.
func TestFetchLooksEachBlobUpOnce(t *testing.T) {
	var blobs [][]byte
	for i := range 100 {
		blobs = append(blobs, []byte(fmt.Sprintf("blob %d", i)))
	}
	blobs = append(blobs, bytes.Repeat([]byte("large blob "), 1<<18)) // streamed
	var ds []digest.Digest
	for _, b := range blobs {
		ds = append(ds, digest.NewFromBlob(b))
	}
	c := serveStore(t, blobs...)
	defer Close([]*Cache{c})
	for _, wait := range []bool{false, true} {
		local, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
		if err != nil {
			t.Fatal(err)
		}
		jobs := newSlots(1)
		f := newFetcher(local, []*Cache{c}, false, Events{}, jobs)
		var lookups atomic.Int64
		f.has = func(d digest.Digest) (bool, error) {
			lookups.Add(1)
			return local.Has(d)
		}
		w := &watch{slot: &slot{of: jobs}}
		want := int64(len(ds))
		if wait {
			// Another ref moves bytes, and stores one of these.
			other := &slot{of: jobs}
			if _, err := other.take(context.Background()); err != nil {
				t.Fatal(err)
			}
			go func() {
				// Once the fetch looked every blob up, it waits for
				// the slot.
				for deadline := time.Now().Add(time.Minute); lookups.Load() < int64(len(ds)) && time.Now().Before(deadline); {
					time.Sleep(time.Millisecond)
				}
				if err := local.PutBytes(ds[0], blobs[0]); err != nil {
					t.Error(err)
				}
				other.release()
			}()
			want = 2 * want
		}
		missing, err := f.fetch(context.Background(), ds, w, nil)
		if err != nil || len(missing) > 0 {
			t.Fatalf("fetch: missing %v, %v", missing, err)
		}
		for _, d := range ds {
			if ok, _ := local.Has(d); !ok {
				t.Fatalf("%v was not fetched", d)
			}
		}
		if got := lookups.Load(); got != want {
			t.Errorf("waited for a slot %v: %d blobs fetched with %d lookups in the store, want %d", wait, len(ds), got, want)
		}
		if moved := f.blobs.Load(); wait && moved != int64(len(ds))-1 {
			t.Errorf("%d blobs downloaded, want %d: the one another ref stored meanwhile was downloaded again", moved, len(ds)-1)
		}
	}
}

// Streams of large blobs count what they hold against the run's bytes in
// flight (inflightBytes): 4 MiB each, so a run reads 8 at most at once,
// however many refs want them (issue 21: 32 streams of 4 MiB blobs at
// once held 85-105 MiB of frames, and a pull's CPU went to first touching
// that memory). Main ran 32.
func TestStreamsCountWhatTheyHold(t *testing.T) {
	fake := newFake("streams")
	fake.streamDelay = 20 * time.Millisecond
	var want [][]digest.Digest
	for i := range 16 {
		var ds []digest.Digest
		for j := range 4 {
			blob := bytes.Repeat([]byte{byte(i), byte(j)}, 1<<20) // 2 MiB: streamed
			d := digest.NewFromBlob(blob)
			fake.blobs[d] = blob
			ds = append(ds, d)
		}
		want = append(want, ds)
	}
	local, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	caches := cacheOf(fake)
	caches[0].Config.MaxConcurrency = 64
	f := newFetcher(local, caches, false, Events{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	for _, ds := range want { // as many refs fetching at once
		g.Go(func() error {
			missing, err := f.fetch(gctx, ds, nil, nil)
			if err == nil && len(missing) > 0 {
				err = fmt.Errorf("%d missing", len(missing))
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("64 streams of 2 MiB, at most %d at once", fake.peakStreams)
	if most := inflightBytes / (2 << 20); fake.peakStreams > most {
		t.Errorf("%d streams of 2 MiB read at once, want at most %d (%d MiB in flight)", fake.peakStreams, most, inflightBytes>>20)
	}
}
