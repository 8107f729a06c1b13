package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/remotes"
)

// PushOptions tune Push.
type PushOptions struct {
	// Force uploads and rewrites the index even when the target already
	// names the same digest, and overwrites a different one.
	Force bool
	// NoClobber leaves a target that names a different digest alone and
	// reports a conflict (copy's promotion rule).
	NoClobber bool
	// DryRun reports what would move and changes nothing.
	DryRun bool
}

// pushStats accumulate over a run.
type pushStats struct {
	blobs, bytes, present atomic.Int64
}

// Push uploads each local ref to each target: only the blobs the target
// lacks, then the index entry last. Results come per ref and target.
func (e *Engine) Push(ctx context.Context, refs []string, targets []*Cache, o PushOptions) ([]Result, Stats) {
	start := time.Now()
	var st pushStats
	results := make([]Result, len(refs)*len(targets))
	var g errgroup.Group
	g.SetLimit(max(e.Jobs, 1))
	for i, ref := range refs {
		for j, t := range targets {
			g.Go(func() error {
				r := e.pushOne(ctx, ref, t, o, &st)
				results[i*len(targets)+j] = r
				e.Events.ref(r)
				return nil
			})
		}
	}
	g.Wait()
	return results, Stats{Blobs: st.blobs.Load(), Bytes: st.bytes.Load(), BlobsPresent: st.present.Load(), Seconds: time.Since(start).Seconds()}
}

// pushRoots is what pushing en sends: everything required, plus optional
// trees wholly present locally (BuildStream pushes a buildtree it has).
func (e *Engine) pushRoots(ref string, en entry) (all []digest.Digest, roots cache.Roots, err error) {
	all, missing, err := e.Store.ClosureOf(en.roots)
	if err != nil {
		return nil, roots, err
	}
	if len(missing) > 0 {
		return nil, roots, fmt.Errorf("the local closure is incomplete: %d blobs missing (e.g. %s)", len(missing), missing[0])
	}
	roots = en.roots
	seen := setOf(all)
	for _, d := range en.optional.Dirs {
		more, miss, err := e.Store.Closure(d)
		if err != nil || len(miss) > 0 {
			continue
		}
		roots.Dirs = append(roots.Dirs, d)
		for _, m := range more {
			if !seen[m] {
				seen[m] = true
				all = append(all, m)
			}
		}
	}
	return all, roots, nil
}

func (e *Engine) pushOne(ctx context.Context, ref string, t *Cache, o PushOptions, st *pushStats) Result {
	res := Result{Ref: ref, Target: t.Name()}
	en, err := e.Kind.localEntry(e.Store, ref)
	if errors.Is(err, cache.ErrNotFound) {
		res.Status, res.Reason = StatusMissing, "not in the local store"
		return res
	}
	if err != nil {
		return failed(res, err)
	}
	res.Digest = en.digest.String()
	all, roots, err := e.pushRoots(ref, en)
	if err != nil {
		return failed(res, err)
	}
	r, err := t.connect(ctx, e.Events)
	if err != nil {
		return failed(res, err)
	}
	index := t.Config.Type.HasIndex()
	if index {
		d, err := e.Kind.lookup(ctx, r, t.caps, ref)
		switch {
		case err == nil && d == en.digest && !o.Force:
			res.Status, res.Reason = StatusSkipped, "the target already has it"
			return res
		case err == nil && d != en.digest && o.NoClobber && !o.Force:
			res.Status, res.Reason = StatusConflict, fmt.Sprintf("the target names %s, not %s (use --force to overwrite)", d, en.digest)
			return res
		case err != nil && !errors.Is(err, remotes.ErrNotFound):
			return failed(res, err)
		}
	}
	if t.Config.Type.HasStorage() {
		if o.DryRun {
			missing, err := r.FindMissing(ctx, all)
			if err != nil {
				return failed(res, err)
			}
			var bytes int64
			for _, d := range missing {
				bytes += d.Size
			}
			st.blobs.Add(int64(len(missing)))
			st.bytes.Add(bytes)
			st.present.Add(int64(len(all) - len(missing)))
			res.Status, res.Reason = StatusDone, fmt.Sprintf("dry run: would upload %d blobs (%d bytes)", len(missing), bytes)
			return res
		}
		open := func(d digest.Digest) (io.ReadCloser, error) { return e.Store.Open(d) }
		moved, bytes, err := r.Upload(ctx, all, open, e.Jobs)
		if err != nil {
			if fatal(err) {
				t.kill(err, e.Events)
			}
			return failed(res, err)
		}
		st.blobs.Add(int64(len(moved)))
		st.bytes.Add(bytes)
		st.present.Add(int64(len(all) - len(moved)))
		e.Events.bytes(bytes)
	} else if o.DryRun {
		res.Status, res.Reason = StatusDone, "dry run: would write the index"
		return res
	}
	if index {
		if err := e.Kind.writeIndex(ctx, r, t.caps, ref, en, roots); err != nil {
			return failed(res, err)
		}
	}
	res.Status = StatusDone
	return res
}
