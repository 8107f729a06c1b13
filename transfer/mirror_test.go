package transfer

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
)

// newMirror is a mirror of upstreams over a fresh BuildStream 1 store.
func newMirror(t *testing.T, upstreams []*Cache) (*Mirror, *cache.Store, *recorder) {
	t.Helper()
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	var rec recorder
	return NewMirror(store, upstreams, MirrorOptions{Jobs: 4, Events: rec.events()}), store, &rec
}

// The mirror's fill rules, one case each: which upstream a ref comes
// from, and that a ref is stored only whole.
func TestMirrorFillRules(t *testing.T) {
	const ref = "p/app/key"
	a := artifact("one", "two", "three")
	lost := a.files[1]
	for _, tc := range []struct {
		name      string
		upstreams func() []*fakeCache
		found     bool
		from      string // the upstream whose blobs were read
		reason    string // in the reason of a miss
	}{
		{"first has it", func() []*fakeCache {
			return []*fakeCache{newFake("a").holding(ref, a), newFake("b").holding(ref, a)}
		}, true, "a", ""},
		{"first lacks the ref", func() []*fakeCache {
			return []*fakeCache{newFake("a"), newFake("b").holding(ref, a)}
		}, true, "b", ""},
		{"first is down", func() []*fakeCache {
			down := newFake("a").holding(ref, a)
			down.unreachable = true
			return []*fakeCache{down, newFake("b").holding(ref, a)}
		}, true, "b", ""},
		{"first names it but lacks a blob the second has", func() []*fakeCache {
			return []*fakeCache{newFake("a").holding(ref, a).lacking(lost), newFake("b").holding(ref, a)}
		}, true, "", ""},
		{"first sends corrupt blobs", func() []*fakeCache {
			bad := newFake("a").holding(ref, a)
			bad.corrupt = true
			return []*fakeCache{bad, newFake("b").holding(ref, a)}
		}, true, "b", ""},
		{"incomplete everywhere", func() []*fakeCache {
			return []*fakeCache{newFake("a").holding(ref, a).lacking(lost), newFake("b").holding(ref, a).lacking(lost)}
		}, false, "", "incomplete everywhere"},
		{"nowhere", func() []*fakeCache {
			return []*fakeCache{newFake("a"), newFake("b")}
		}, false, "", "not in a, b"},
		{"every upstream down: a miss", func() []*fakeCache {
			down := newFake("a").holding(ref, a)
			down.unreachable = true
			return []*fakeCache{down}
		}, false, "", "could not ask"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fakes := tc.upstreams()
			m, store, _ := newMirror(t, cacheOf(fakes...))
			found, reason, err := m.FillRef(context.Background(), cache.KindBst1Artifact, ref)
			if err != nil {
				t.Fatal(err)
			}
			if found != tc.found || !strings.Contains(reason, tc.reason) {
				t.Fatalf("FillRef: found %v (%q), want %v (%q)", found, reason, tc.found, tc.reason)
			}
			_, err = store.GetRef(cache.KindBst1Artifact, ref)
			if !found {
				if err == nil {
					t.Fatal("a ref no upstream holds whole was stored")
				}
				return
			}
			if err != nil {
				t.Fatalf("the filled ref: %v", err)
			}
			if _, missing, err := store.ClosureOf(cache.Roots{Dirs: []digest.Digest{a.root}}); err != nil || len(missing) > 0 {
				t.Fatalf("closure after the fill: missing %v, %v", missing, err)
			}
			for _, f := range fakes {
				if tc.from != "" && f.name != tc.from && !f.corrupt && len(f.reads) > 0 {
					t.Errorf("upstream %s was read (%v), want only %s", f.name, f.reads, tc.from)
				}
			}
		})
	}
}

// Any number of requests for one ref and one blob at once cause one fetch
// of each blob from the upstream.
func TestMirrorOneFetchPerBlob(t *testing.T) {
	const ref = "p/app/key"
	a := artifact("one", "two", strings.Repeat("big", 1<<20)) // one streamed
	up := newFake("up").holding(ref, a)
	m, store, _ := newMirror(t, cacheOf(up))
	big := a.files[2]
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 16 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if found, reason, err := m.FillRef(context.Background(), cache.KindBst1Artifact, ref); err != nil || !found {
				errs <- errors.New("FillRef: " + reason)
			}
		}()
		go func() {
			defer wg.Done()
			var buf bytes.Buffer
			if found, err := m.StreamBlob(context.Background(), big, &buf); err != nil || !found || !bytes.Equal(buf.Bytes(), a.blobs[big]) {
				errs <- errors.New("StreamBlob did not serve the blob")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for d, n := range up.reads {
		if n != 1 {
			t.Errorf("blob %s read %d times from the upstream, want once", d, n)
		}
	}
	if ok, _ := store.Has(big); !ok {
		t.Error("the streamed blob was not stored")
	}
}

// A blob read through is stored only when it matched its digest; a
// corrupt one is refused, not stored, and the next read turns to the next
// upstream. A blob larger than the mirror keeps is served, not stored.
func TestMirrorStreamBlob(t *testing.T) {
	data := []byte(strings.Repeat("x", 100))
	d := digest.NewFromBlob(data)
	bad, good := newFake("bad"), newFake("good")
	bad.blobs[d], good.blobs[d] = data, data
	bad.corrupt = true
	m, store, rec := newMirror(t, cacheOf(bad, good))

	var buf bytes.Buffer
	found, err := m.StreamBlob(context.Background(), d, &buf)
	if !found || !errors.Is(err, cache.ErrDigestMismatch) {
		t.Fatalf("corrupt upstream: found %v, %v; want a digest mismatch", found, err)
	}
	if ok, _ := store.Has(d); ok {
		t.Fatal("a corrupt blob was stored")
	}
	if len(rec.warns) == 0 || !strings.Contains(rec.warns[0], "cache bad") {
		t.Errorf("no warning naming the corrupt upstream: %q", rec.warns)
	}
	buf.Reset()
	if found, err := m.StreamBlob(context.Background(), d, &buf); !found || err != nil || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("second read: found %v, %v, %d bytes; want the good upstream's", found, err, buf.Len())
	}
	if ok, _ := store.Has(d); !ok {
		t.Fatal("the good blob was not stored")
	}

	big := []byte(strings.Repeat("y", 1000))
	bd := digest.NewFromBlob(big)
	good.blobs[bd] = big
	buf.Reset()
	m.f.keep = 999
	if found, err := m.StreamBlob(context.Background(), bd, &buf); !found || err != nil || !bytes.Equal(buf.Bytes(), big) {
		t.Fatalf("blob over the limit: found %v, %v; want it served", found, err)
	}
	if ok, _ := store.Has(bd); ok {
		t.Error("a blob larger than the limit was stored")
	}
	if found, err := m.StreamBlob(context.Background(), digest.NewFromBlob([]byte("none")), &buf); found || err != nil {
		t.Errorf("a blob no upstream has: found %v, %v", found, err)
	}
}

// FindMissingBlobs through a mirror: a blob an upstream holds is not
// missing; an upstream that is down holds nothing.
func TestMirrorMissing(t *testing.T) {
	one, two, three := digest.NewFromBlob([]byte("1")), digest.NewFromBlob([]byte("2")), digest.NewFromBlob([]byte("3"))
	a, b, down := newFake("a"), newFake("b"), newFake("down")
	a.blobs[one] = []byte("1")
	b.blobs[two] = []byte("2")
	down.blobs[three] = []byte("3")
	down.unreachable = true
	m, _, _ := newMirror(t, cacheOf(a, down, b))
	missing, err := m.Missing(context.Background(), []digest.Digest{one, two, three})
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 1 || missing[0] != three {
		t.Errorf("missing %v, want only %s", missing, three)
	}
}

// blockedWriter takes nothing until unblocked.
type blockedWriter struct{ unblock chan struct{} }

func (b blockedWriter) Write(p []byte) (int, error) {
	<-b.unblock
	return 0, errors.New("reader gone")
}

// A reader that stops taking bytes neither holds up the fetch nor the
// readers waiting for it: it is cut off, and the blob is stored.
func TestMirrorStalledReaderIsCutOff(t *testing.T) {
	data := []byte(strings.Repeat("z", 1<<20)) // 16 messages of the fake
	d := digest.NewFromBlob(data)
	up := newFake("up")
	up.blobs[d] = data
	m, store, _ := newMirror(t, cacheOf(up))
	m.stall = 100 * time.Millisecond
	stuck := blockedWriter{make(chan struct{})}
	stuckDone := make(chan error, 1)
	go func() {
		_, err := m.StreamBlob(context.Background(), d, stuck)
		stuckDone <- err
	}()
	var buf bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for { // wait until the stuck read has claimed the blob
		if _, wait := m.f.flights.claim(d); wait != nil {
			break
		}
		m.f.flights.release(d)
		time.Sleep(time.Millisecond)
	}
	if found, err := m.StreamBlob(ctx, d, &buf); !found || err != nil || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("a reader behind a stalled one: found %v, %v, %d bytes", found, err, buf.Len())
	}
	if ok, _ := store.Has(d); !ok {
		t.Fatal("the blob was not stored")
	}
	close(stuck.unblock)
	if err := <-stuckDone; err == nil {
		t.Error("the stalled reader was not told it was cut off")
	}
	if up.reads[d] != 1 {
		t.Errorf("upstream read %d times, want once", up.reads[d])
	}
}

// A mirror keeps no blob larger than its quota: an artifact that holds
// one is not filled (a miss, nothing of it stored past the limit), while
// the blob itself is read through.
func TestMirrorKeepsNoBlobLargerThanItsQuota(t *testing.T) {
	const ref = "p/app/key"
	a := artifact("one", strings.Repeat("large", 100))
	up := newFake("up").holding(ref, a)
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	var rec recorder
	m := NewMirror(store, cacheOf(up), MirrorOptions{Keep: 400, Events: rec.events()})
	found, reason, err := m.FillRef(context.Background(), cache.KindBst1Artifact, ref)
	if err != nil || found {
		t.Fatalf("FillRef of an artifact holding a blob over the limit: found %v, %v", found, err)
	}
	if _, err := store.GetRef(cache.KindBst1Artifact, ref); err == nil {
		t.Error("the ref was stored")
	}
	large := a.files[1]
	if ok, _ := store.Has(large); ok {
		t.Error("the blob over the limit was stored")
	}
	if !strings.Contains(strings.Join(rec.warns, "\n"), "larger than this store keeps") {
		t.Errorf("no warning says why (reason %q): %q", reason, rec.warns)
	}
	var buf bytes.Buffer
	if found, err := m.StreamBlob(context.Background(), large, &buf); !found || err != nil || buf.Len() != int(large.Size) {
		t.Errorf("read through of the large blob: found %v, %v, %d bytes", found, err, buf.Len())
	}
	if ok, _ := store.Has(large); ok {
		t.Error("the blob read through was stored")
	}
}
