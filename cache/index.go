package cache

import (
	"context"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// objectIndex is the in-memory set of a store's objects that IndexObjects
// keeps, for lookups that cost no system call (serve's FindMissingBlobs
// asks about thousands of digests a call; a stat costs microseconds).
//
// Each object is 24 bytes of map entry: the first 16 bytes of its hash
// and its size (two objects of a store sharing 128 bits of SHA-256 are
// not a chance worth a byte).
type objectIndex struct {
	mu sync.RWMutex
	m  map[objectKey]int64
	// complete: the start-up walk finished, so that what the index lacks
	// the store lacks too, unless another process wrote it since.
	complete bool
	// gone holds what was removed while the walk ran, which the walk must
	// not put back from a directory it listed before the removal.
	gone map[objectKey]struct{}
	// removals counts removals, so that what a stat found is not put back
	// when the object was removed since the stat.
	removals uint64
	// w follows what other processes do to the objects, once started.
	w   atomic.Pointer[watcher]
	ctx context.Context
	// late: created started a second build, once.
	late atomic.Bool
}

func (x *objectIndex) hasKey(k objectKey) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.m[k]
	return ok
}

// exact says whether the index lacks exactly what the disk lacks: its
// walk is done and its watcher, drained now, missed nothing.
func (x *objectIndex) exact() bool {
	w := x.w.Load()
	if w == nil || !w.drain(x) {
		return false
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.complete
}

// drainPeriod is how often queued events are taken in when nothing asks:
// the kernel's queue (16,384 events by default) holds that long of
// object writes at over 100,000 a second.
const drainPeriod = 100 * time.Millisecond

// objectKey is an object's index key: its hash's first 16 bytes.
type objectKey [16]byte

// key is the key of a checked hash.
func key(hash string) (k objectKey) {
	hex.Decode(k[:], []byte(hash[:32]))
	return k
}

func (x *objectIndex) add(d digest.Digest) {
	x.mu.Lock()
	x.m[key(d.Hash)] = d.Size
	x.mu.Unlock()
}

// found records what the walk found, unless it was removed meanwhile.
func (x *objectIndex) found(d digest.Digest) {
	k := key(d.Hash)
	x.mu.Lock()
	if _, ok := x.gone[k]; !ok {
		x.m[k] = d.Size
	}
	x.mu.Unlock()
}

// generation is what saw needs to know that nothing was removed since.
func (x *objectIndex) generation() uint64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.removals
}

// saw corrects the index with what the disk said of d, when the index
// was at generation gen: an object found is added unless something was
// removed since (it may have been d), one not found is removed.
func (x *objectIndex) saw(d digest.Digest, present bool, gen uint64) {
	k := key(d.Hash)
	x.mu.RLock()
	size, ok := x.m[k]
	x.mu.RUnlock()
	switch {
	case present && (!ok || size != d.Size):
		x.mu.Lock()
		if x.removals == gen {
			x.m[k] = d.Size
		}
		x.mu.Unlock()
	case !present && ok && size == d.Size:
		x.remove(d)
	}
}

func (x *objectIndex) remove(d digest.Digest) { x.removeKey(key(d.Hash)) }

func (x *objectIndex) removeKey(k objectKey) {
	x.mu.Lock()
	delete(x.m, k)
	x.removals++
	if !x.complete {
		x.gone[k] = struct{}{}
	}
	x.mu.Unlock()
}

// IndexObjects makes the store keep an index of its objects in memory, for
// Present and Absent: objects are added as this Store writes them or
// finds them on disk and removed as it removes them; a walk of the store,
// started now in the background, adds those already there, and inotify
// reports what other processes link or remove. It returns at once; done,
// when not nil, receives the walk's error once it ends. Until the walk is
// done, and whenever the watch is lost (an overflowed queue), the disk
// answers what the index cannot. The watch ends with ctx. Meant for a
// long-lived process (serve); a store created after this call (no objects
// directory yet) is walked and watched once its first write makes one.
func (s *Store) IndexObjects(ctx context.Context, done func(error)) {
	x := &objectIndex{m: map[objectKey]int64{}, gone: map[objectKey]struct{}{}, ctx: ctx}
	s.index.Store(x)
	go func() {
		err := x.build(s)
		if done != nil {
			done(err)
		}
		t := time.NewTicker(drainPeriod)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				if w := x.w.Load(); w != nil {
					w.close()
				}
				return
			case <-t.C:
				if w := x.w.Load(); w != nil {
					w.drain(x)
				}
			}
		}
	}()
}

// build watches the objects directory, then walks it: what is linked
// between the two is seen twice, which is harmless; nothing is missed.
func (x *objectIndex) build(s *Store) error {
	if w, err := watch(s.objects()); err == nil && !x.w.CompareAndSwap(nil, w) {
		w.close() // the other build's watch came first
	}
	err := s.WalkObjects(func(o ObjectInfo) error {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		x.found(o.Digest)
		return nil
	})
	if err == nil {
		x.mu.Lock()
		x.complete, x.gone = true, nil
		x.mu.Unlock()
	}
	return err
}

// created is told that the store just made its objects directory: an
// index without a watch starts one, and walks again what another process
// may have put there first.
func (x *objectIndex) created(s *Store) {
	if x.w.Load() != nil || x.ctx.Err() != nil || !x.late.CompareAndSwap(false, true) {
		return
	}
	x.mu.Lock()
	x.complete, x.gone = false, map[objectKey]struct{}{}
	x.mu.Unlock()
	go x.build(s)
}

// Present says for each digest of ds whether the store holds it, as Has
// does. The index IndexObjects keeps answers absence (once its walk is
// done); whatever it holds, the disk confirms, so an object removed behind
// its back (gc while serve runs, a file deleted by hand) never reads as
// present. It may be wrong one way: an object another process wrote and
// the watch has not reported yet reads as absent (a client uploads it
// again, which finds it there). So Present answers "what need I upload",
// never "may I name this in a ref".
func (s *Store) Present(ds []digest.Digest) ([]bool, error) {
	for _, d := range ds {
		if err := checkDigest(d); err != nil {
			return nil, err
		}
	}
	out := make([]bool, len(ds))
	x := s.index.Load()
	var ask []int // what the index cannot answer
	if x == nil {
		ask = make([]int, len(ds))
		for i := range ask {
			ask[i] = i
		}
	} else {
		if w := x.w.Load(); w != nil {
			w.drain(x)
		}
		x.mu.RLock()
		for i, d := range ds {
			// Only absence is answered from memory: a "present" that
			// is wrong (an object removed behind the index's back)
			// makes a client skip an upload, so the disk confirms it.
			if _, ok := x.m[key(d.Hash)]; ok || !x.complete {
				ask = append(ask, i)
			}
		}
		x.mu.RUnlock()
	}
	for _, i := range ask {
		ok, err := s.Has(ds[i])
		if err != nil {
			return nil, err
		}
		out[i] = ok
	}
	return out, nil
}

// Absent says for each digest of ds whether the store surely lacks it:
// true only where the index follows the disk exactly (IndexObjects, its
// walk done, its watch drained now) and lacks it. Everything else is
// false: ask the disk. A read may answer NOT_FOUND on its word without
// opening a file.
func (s *Store) Absent(ds []digest.Digest) []bool {
	out := make([]bool, len(ds))
	x := s.index.Load()
	if x == nil || !x.exact() {
		return out
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	for i, d := range ds {
		if !validHash(d.Hash) {
			continue
		}
		_, ok := x.m[key(d.Hash)]
		out[i] = !ok
	}
	return out
}
