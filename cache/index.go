package cache

import (
	"context"
	"encoding/hex"
	"sync"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// objectIndex is the in-memory set of a store's objects that IndexObjects
// keeps, for lookups that cost no system call (serve's FindMissingBlobs
// asks about thousands of digests a call; a stat costs microseconds).
//
// Each object is 16 bytes of map entry: the first 8 bytes of its hash and
// its size. Two objects sharing a 64-bit prefix are a chance of about n in
// 2^64; one costs a wrong answer to Present only (never a wrong byte read:
// reads open the file), and see Present for what a wrong answer costs.
type objectIndex struct {
	mu sync.RWMutex
	m  map[uint64]int64
	// complete: the start-up walk finished, so that what the index lacks
	// the store lacks too, unless another process wrote it since.
	complete bool
	// gone holds what was removed while the walk ran, which the walk must
	// not put back from a directory it listed before the removal.
	gone map[uint64]struct{}
	// removals counts removals, so that what a stat found is not put back
	// when the object was removed since the stat.
	removals uint64
}

// key is an object's index key: its hash's first 8 bytes.
func key(hash string) uint64 {
	var b [8]byte
	hex.Decode(b[:], []byte(hash[:16]))
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
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

func (x *objectIndex) remove(d digest.Digest) {
	k := key(d.Hash)
	x.mu.Lock()
	delete(x.m, k)
	x.removals++
	if !x.complete {
		x.gone[k] = struct{}{}
	}
	x.mu.Unlock()
}

// IndexObjects makes the store keep an index of its objects in memory, for
// Present: objects are added as this Store writes them or finds them on
// disk and removed as it removes them, and a walk of the store, started
// now in the background, adds those already there. It returns at once;
// the walk ends with ctx or when done (done, when not nil, receives its
// error). Until the walk is done, Present asks the disk about what the
// index lacks. Meant for a long-lived process (serve) that writes the
// store through this Store.
func (s *Store) IndexObjects(ctx context.Context, done func(error)) {
	x := &objectIndex{m: map[uint64]int64{}, gone: map[uint64]struct{}{}}
	s.index.Store(x)
	go func() {
		err := s.WalkObjects(func(o ObjectInfo) error {
			if err := ctx.Err(); err != nil {
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
		if done != nil {
			done(err)
		}
	}()
}

// Present says for each digest of ds whether the store holds it, as Has
// does, but from the index IndexObjects keeps where it can: without one,
// or for what an index still being built lacks, it asks the disk. It may
// be wrong in two ways: an object another process wrote since the walk
// reads as absent (a client uploads it again, which finds it there), and
// one another process removed behind this Store's back (gc while serve
// runs; a prefix collision, see objectIndex) reads as present until Has
// looks at the disk, which it does for every ref written (ClosureOf): the
// ref is refused, the index corrected. So Present answers "what need I
// upload", never "may I name this in a ref".
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
		x.mu.RLock()
		for i, d := range ds {
			size, ok := x.m[key(d.Hash)]
			switch {
			case ok && size == d.Size:
				out[i] = true
			case !x.complete || ok:
				// Not known, or known with another size (a prefix
				// shared with another object): the disk says.
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
