package cache

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"io/fs"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// objectIndex is the in-memory set of a store's objects that IndexObjects
// keeps, for lookups that cost no system call (serve's FindMissingBlobs
// asks about thousands of digests a call; a stat costs microseconds).
//
// Each object is a 24-byte slot: the first 16 bytes of its hash and its
// size (two objects of a store sharing 128 bits of SHA-256 are not a
// chance worth a byte), in a table (objectTable) at most three quarters
// full. The tables are one per prefix directory, so that a directory
// listed anew replaces what the index held of it.
//
// What the index holds comes from the disk alone, in the order the disk
// changed: the start-up walk, then the watch's events and the listings of
// directories it starts watching. Nothing this process observed on its own
// (a write it committed, a stat) is added, since an observation made
// before a removal the watch reports later, or never (a directory not yet
// watched), would put back an object that is gone.
type objectIndex struct {
	mu   sync.RWMutex
	seed maphash.Seed // the tables' (see objectTable)
	m    [256]objectTable
	// listed counts, per prefix directory, the listings that replaced
	// what the index held of it: the walk adds what it listed of a
	// directory only if no newer listing came since.
	listed [256]uint64
	// complete: the walk finished, so that what the index lacks the store
	// lacks too, as of the watch's last drain.
	complete bool
	// gone holds what was removed while the walk ran, which the walk must
	// not put back from a directory it listed before the removal.
	gone map[objectKey]struct{}
	// w follows what every process does to the objects, once started.
	w   atomic.Pointer[watcher]
	ctx context.Context
	// building: one build (watch and walk) at a time.
	building sync.Mutex
	// late: created started a second build, once.
	late atomic.Bool
	// lost is IndexOptions.Lost.
	lost func(error)
}

func newObjectIndex(ctx context.Context, lost func(error)) *objectIndex {
	if lost == nil {
		lost = func(error) {}
	}
	return &objectIndex{ctx: ctx, lost: lost, gone: map[objectKey]struct{}{}, seed: maphash.MakeSeed()}
}

// following drains the watch and says whether the index follows the disk:
// it has a watch and the watch missed nothing.
func (x *objectIndex) following() bool {
	w := x.w.Load()
	return w != nil && w.drain(x) == nil
}

// exact says whether the index lacks exactly what the disk lacks: its
// walk is done and its watch, drained now, missed nothing.
func (x *objectIndex) exact() bool {
	if !x.following() {
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
	decodeHex(k[:], hash[:32])
	return k
}

func (x *objectIndex) add(d digest.Digest) {
	k := key(d.Hash)
	x.mu.Lock()
	x.m[k[0]].set(x.seed, &k, d.Size)
	x.mu.Unlock()
}

// found records what the walk found in a directory it listed when the
// directory's listings were at count listed, unless it was removed or the
// directory listed anew since.
func (x *objectIndex) found(d digest.Digest, listed uint64) {
	k := key(d.Hash)
	x.mu.Lock()
	if _, ok := x.gone[k]; !ok && x.listed[k[0]] == listed {
		x.m[k[0]].set(x.seed, &k, d.Size)
	}
	x.mu.Unlock()
}

// listing is how many listings replaced what the index held of the prefix
// directory prefix (0 for a directory that is none).
func (x *objectIndex) listing(prefix string) uint64 {
	if !isPrefix(prefix) {
		return 0
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.listed[prefixByte(prefix)]
}

// relist replaces what the index holds of the prefix directory p with
// what a listing of it found.
func (x *objectIndex) relist(p byte, objects []ObjectInfo) {
	var t objectTable
	for _, o := range objects {
		k := key(o.Digest.Hash)
		t.set(x.seed, &k, o.Digest.Size)
	}
	x.mu.Lock()
	x.m[p] = t
	x.listed[p]++
	x.mu.Unlock()
}

func (x *objectIndex) remove(d digest.Digest) { x.removeKey(key(d.Hash)) }

func (x *objectIndex) removeKey(k objectKey) {
	x.mu.Lock()
	x.m[k[0]].remove(x.seed, &k)
	if !x.complete {
		x.gone[k] = struct{}{}
	}
	x.mu.Unlock()
}

// IndexOptions are what IndexObjects tells its caller.
type IndexOptions struct {
	// Visit, when set, is called for each object the start-up walk
	// finds, so that a caller needing a walk of its own (serve's quota
	// account) shares this one.
	Visit func(ObjectInfo)
	// Done, when set, receives the start-up walk's error once it ends.
	Done func(error)
	// Lost, when set, is told why the index stopped following the disk
	// (inotify unavailable, its queue overflowed): lookups ask the disk
	// until a new watch and walk, started at once, are done.
	Lost func(error)
}

// IndexObjects makes the store keep an index of its objects in memory, for
// Present and Absent: a walk of the store, started now in the background,
// adds those already there, and inotify reports what any process, this
// one included, links or removes. It returns at once. Until the walk is
// done, and whenever the watch is lost (an overflowed queue: the index is
// then built again), the disk answers what the index cannot. The watch
// ends with ctx. Meant for a long-lived process (serve); a store created
// after this call (no objects directory yet) is walked and watched once
// its first write makes one.
func (s *Store) IndexObjects(ctx context.Context, o IndexOptions) {
	x := newObjectIndex(ctx, o.Lost)
	s.index.Store(x)
	go func() {
		err := x.build(s, o.Visit)
		if o.Done != nil {
			o.Done(err)
		}
	}()
	go s.follow(ctx, o.Lost)
}

// follow drains the index's watch every drainPeriod until ctx ends, and
// replaces an index whose watch missed events (an overflowed queue) with a
// new one, built in the background: what it held may be gone.
func (s *Store) follow(ctx context.Context, lost func(error)) {
	t := time.NewTicker(drainPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if w := s.index.Load().w.Load(); w != nil {
				w.close()
			}
			return
		case <-t.C:
		}
		x := s.index.Load()
		w := x.w.Load()
		if w == nil {
			continue
		}
		if err := w.drain(x); err != nil && ctx.Err() == nil {
			x.lost(fmt.Errorf("the object index missed changes, lookups ask the disk while it is built again: %w", err))
			w.close()
			x = newObjectIndex(ctx, lost)
			s.index.Store(x)
			go x.build(s, nil)
		}
	}
}

// build watches the objects directory, then walks it: what is linked
// between the two is seen twice, which is harmless; nothing is missed. A
// watch that cannot be set up is told to x.lost (the walk still visits
// every object, for visit); an objects directory that does not exist yet
// is not lost, only late (created).
func (x *objectIndex) build(s *Store, visit func(ObjectInfo)) error {
	x.building.Lock()
	defer x.building.Unlock()
	x.mu.Lock()
	x.complete, x.gone = false, map[objectKey]struct{}{}
	x.mu.Unlock()
	objects := s.objects()
	if x.w.Load() == nil {
		w, err := watch(objects)
		switch {
		case err == nil:
			x.w.Store(w)
			if x.ctx.Err() != nil { // follow may have closed the watch it had
				w.close()
			}
		case !errors.Is(err, fs.ErrNotExist) && x.ctx.Err() == nil:
			x.lost(fmt.Errorf("the object index cannot follow the store, lookups ask the disk: %w", err))
		}
	}
	err := walkObjects(objects, x.listing, func(o ObjectInfo, listed uint64) error {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		x.found(o.Digest, listed)
		if visit != nil {
			visit(o)
		}
		return nil
	})
	if err != nil {
		return err
	}
	x.mu.Lock()
	x.complete, x.gone = true, nil
	x.mu.Unlock()
	return nil
}

// isPrefix says whether name is a prefix directory's: two hex digits.
func isPrefix(name string) bool {
	return len(name) == 2 && lowerHex[name[0]] && lowerHex[name[1]]
}

// prefixByte is the first byte of the hashes under a prefix directory.
func prefixByte(prefix string) byte {
	var b [1]byte
	hex.Decode(b[:], []byte(prefix))
	return b[0]
}

// created is told that the store just made its objects directory: an
// index without a watch starts one, and walks again what another process
// may have put there first.
func (x *objectIndex) created(s *Store) {
	if x.w.Load() != nil || x.ctx.Err() != nil || !x.late.CompareAndSwap(false, true) {
		return
	}
	go x.build(s, nil)
}

// Present says for each digest of ds whether the store holds it, as Has
// does. The index IndexObjects keeps answers while it follows the disk
// (its watch drained now, nothing missed): what it holds with the size
// asked is present, what it lacks once its walk is done is absent; the
// disk answers the rest, and everything without an index or with a lost
// watch. An object another process removed is never present: its removal
// was queued by the system call that made it, before this drain. Contents
// are not checked (as Has): a corrupt object is caught when it is read
// (every whole-blob read is hashed) and what decides whether a ref may be
// written asks the disk.
func (s *Store) Present(ds []digest.Digest) ([]bool, error) {
	for _, d := range ds {
		if err := checkDigest(d); err != nil {
			return nil, err
		}
	}
	out := make([]bool, len(ds))
	x := s.index.Load()
	var ask []int // what the index cannot answer
	if x == nil || !x.following() {
		ask = make([]int, len(ds))
		for i := range ask {
			ask[i] = i
		}
	} else {
		var keys [lookupChunk]objectKey
		var sizes [lookupChunk]int64
		var found [lookupChunk]bool
		x.mu.RLock()
		for at := 0; at < len(ds); at += lookupChunk {
			chunk := ds[at:min(len(ds), at+lookupChunk)]
			for j, d := range chunk {
				keys[j] = key(d.Hash)
			}
			lookupAll(x.seed, &x.m, keys[:len(chunk)], sizes[:], found[:])
			for j, d := range chunk {
				switch {
				case found[j] && sizes[j] == d.Size:
					out[at+j] = true
				case found[j] || !x.complete:
					// Not walked yet, or held with another size
					// (a prefix shared with another object): the
					// disk says.
					ask = append(ask, at+j)
				}
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
		k := key(d.Hash)
		_, ok := x.m[k[0]].get(x.seed, &k)
		out[i] = !ok
	}
	return out
}
