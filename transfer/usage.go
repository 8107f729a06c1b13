package transfer

import (
	"context"
	"fmt"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/spool"
)

// RefUsage is what one local ref's closure takes.
type RefUsage struct {
	Ref   string `json:"ref"`
	Bytes int64  `json:"bytes"`
	Blobs int    `json:"blobs"`
	// Missing is how many blobs of the closure the store lacks.
	Missing int    `json:"missing,omitempty"`
	Error   string `json:"error,omitempty"`
}

// StoreUsage sums a store up.
type StoreUsage struct {
	// Bytes and Objects are every object in the store.
	Bytes   int64 `json:"bytes"`
	Objects int   `json:"objects"`
	// UniqueBytes is what the refs asked about reach, each blob once.
	UniqueBytes int64 `json:"unique_bytes"`
}

// Usages is what Usage measured: each ref's closure, in the order of the
// refs, and the store. It holds 17 bytes a ref; Close it once done.
type Usages struct {
	Store StoreUsage
	names *spool.Strings
	refs  []refUsage
	// errs are the refs that could not be measured, by their place.
	errs map[int]string
}

// refUsage is a RefUsage without its ref.
type refUsage struct {
	bytes          int64
	blobs, missing int32
}

// Len is how many refs were measured.
func (u *Usages) Len() int { return len(u.refs) }

// Each calls fn with each ref's usage, in the order of the refs, until fn
// fails.
func (u *Usages) Each(fn func(RefUsage) error) error {
	return u.names.Each(func(i int, ref string) error {
		if msg, ok := u.errs[i]; ok {
			return fn(RefUsage{Ref: ref, Error: msg})
		}
		r := u.refs[i]
		return fn(RefUsage{Ref: ref, Bytes: r.bytes, Blobs: int(r.blobs), Missing: int(r.missing)})
	})
}

// Close lets go of what Usages keeps.
func (u *Usages) Close() error { return u.names.Close() }

// Usage measures refs' closures in the local store (optional trees it
// holds included) and the store as a whole. The refs are read refBatch at
// a time, and each batch's Directories together (each once in a batch); a
// file counts as present if it was in the store when Usage looked at its
// part of the objects. A store of more than objectsPerPass objects is
// measured in passes, each over the objects of a range of first bytes of
// their hashes, so that what it holds is bounded whatever the store's
// size: the trees are read in the first, and what they reach beyond its
// range waits for its pass in unnamed temporary files (46 bytes a digest
// a ref reaches, once for refs naming the same artifact one after the
// other, as an artifact's strong and weak refs do).
func (e *Engine) Usage(ctx context.Context, refs []string) (*Usages, error) {
	names := spool.New(0)
	for _, ref := range refs {
		if err := names.Add(ref); err != nil {
			names.Close()
			return nil, err
		}
	}
	return e.usage(ctx, names)
}

// UsageAll is Usage of every local ref of the engine's kind, in name
// order. Their names wait in a temporary file between passes, not in
// memory: it has no name, so nothing is left of it however the run ends.
func (e *Engine) UsageAll(ctx context.Context) (*Usages, error) {
	// Every ref of a store is many: in a file almost at once.
	names := spool.New(64 << 10)
	c := e.Store.Refs(e.Kind, "", "")
	var err error
	for c.Next() && err == nil {
		err = names.Add(c.Name())
	}
	if err == nil {
		err = c.Err()
	}
	if err != nil {
		names.Close()
		return nil, fmt.Errorf("listing the local refs: %w", err)
	}
	return e.usage(ctx, names)
}

// usage measures the refs in names, and closes names unless it returns
// them in Usages.
func (e *Engine) usage(ctx context.Context, names *spool.Strings) (_ *Usages, err error) {
	defer func() {
		if err != nil {
			names.Close()
		}
	}()
	u := &Usages{names: names, refs: make([]refUsage, names.Len()), errs: map[int]string{}}
	ahead := newLater()
	defer ahead.Close()
	// same marks the refs whose entry is the one before them: what the
	// passes after the first find is counted for that one only.
	same := make([]bool, names.Len())
	for from := 0; from < 256; {
		t, total, err := e.objectTable(from, objectsPerPass, nil)
		if err != nil {
			return nil, err
		}
		u.Store.Bytes += total
		u.Store.Objects += t.count()
		if from == 0 {
			err = e.usageFirst(ctx, u, t, ahead, same)
		} else {
			err = ahead.each(t.lo, t.hi, func(k cache.DigestKey, i int32, how byte) error {
				if _, failed := u.errs[int(i)]; !failed {
					if n, ok := u.refs[i].add(t, k, reach(how)); ok {
						u.reached(t, n)
					}
				}
				return nil
			})
		}
		if err != nil {
			return nil, err
		}
		from = t.hi
	}
	for i := 1; i < len(same); i++ {
		if same[i] {
			u.refs[i] = u.refs[i-1]
		}
	}
	return u, nil
}

// usageFirst is usage's first pass, over t: it reads the refs and their
// trees, counts what t holds, and keeps in ahead what is beyond t.
func (e *Engine) usageFirst(ctx context.Context, u *Usages, t *digestTable, ahead *later, same []bool) error {
	lt := newLocalTrees(e.Store)
	var batch []string
	var at []int
	var hits []int32
	var prev entry
	measure := func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		ens, errs := e.localEntries(ctx, e.Kind, batch)
		lt.reset()
		roots := make([]numRoots, len(batch))
		for i, en := range ens {
			if errs[i] == nil {
				roots[i], errs[i] = lt.rootsOf(en)
			}
		}
		if err := lt.load(ctx, roots, nil); err != nil {
			return err
		}
		for j, i := range at {
			var r refUsage
			hits = hits[:0]
			err := errs[j]
			if err == nil {
				same[i] = i > 0 && j > 0 && errs[j-1] == nil && ens[j].kind == prev.kind && ens[j].digest == prev.digest
				prev = ens[j]
				var aerr error
				err = lt.closure(roots[j], func(k cache.DigestKey, how reach) {
					if !t.holds(k) {
						if !same[i] && aerr == nil {
							aerr = ahead.add(k, int32(i), byte(how))
						}
						return
					}
					if n, ok := r.add(t, k, how); ok {
						hits = append(hits, n)
					}
				})
				if aerr != nil {
					return aerr
				}
			}
			if err != nil {
				u.errs[i] = err.Error()
				continue
			}
			for _, n := range hits {
				u.reached(t, n)
			}
			u.refs[i].bytes += r.bytes
			u.refs[i].blobs += r.blobs
			u.refs[i].missing += r.missing
		}
		batch, at = batch[:0], at[:0]
		return nil
	}
	if err := u.names.Each(func(i int, ref string) error {
		batch = append(batch, ref)
		at = append(at, i)
		if len(batch) < refBatch {
			return nil
		}
		return measure()
	}); err != nil {
		return err
	}
	return measure()
}

// add counts digest k, in t's range, which a ref reached knowing how: its
// number in t if it is there.
func (r *refUsage) add(t *digestTable, k cache.DigestKey, how reach) (int32, bool) {
	n, ok := t.has(k)
	switch {
	case how == reachLost || how == reachFile && !ok:
		r.missing++
		return 0, false
	case !ok: // a Directory written since the walk
		n = t.number(k)
	}
	r.bytes += keySize(k)
	r.blobs++
	return n, true
}

// reached notes that a ref reached digest n of t.
func (u *Usages) reached(t *digestTable, n int32) {
	if t.mark[n] == 0 {
		t.mark[n] = 1
		u.Store.UniqueBytes += t.size(int(n))
	}
}
