package transfer

import (
	"context"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"
)

// CopyOptions tune Copy. Promotion is always no-clobber unless Force.
type CopyOptions struct {
	PushOptions
	// IncludeFailed promotes bst2 artifacts whose build failed.
	IncludeFailed bool
}

// Copy moves refs from the engine's caches (the sources, in priority
// order) to targets through the local store: a pull, then a push that
// leaves a target naming a different digest alone unless forced. The
// sources are the only evidence: a ref must resolve there and its closure
// be complete on their storage; the local store only saves downloading
// blobs it already holds. Each ref is pushed as soon as it is local, while
// other refs are still pulled, so both sides stay busy. Staged objects
// stay in the local store for the next run. Results come in the order of
// refs.
func (e *Engine) Copy(ctx context.Context, refs []string, targets []*Cache, o CopyOptions) ([]Result, Stats) {
	ctx = e.Events.bind(ctx)
	start := time.Now()
	if o.DryRun {
		results := make([][]Result, len(refs))
		for i, ref := range refs {
			results[i] = e.copyDryRun(ctx, ref, targets, o)
			for _, r := range results[i] {
				e.Events.ref(r)
			}
		}
		var st pushStats
		return flatten(results), st.stats(start, results)
	}
	e.keyUploads(targets)
	// Pulls report through the caller only when they fail: a ref's result
	// is its push.
	puller := *e
	puller.Events.OnRef = nil
	var st pushStats
	perRef := make([][]Result, len(refs))
	var pushes errgroup.Group
	pushes.SetLimit(e.lookahead())
	jobs := newSlots(e.Jobs)
	_, pst := puller.pull(ctx, refs, PullOptions{Evidence: true}, func(i int, r Result) {
		switch {
		case r.Status != StatusDone:
			perRef[i] = []Result{r}
			e.Events.ref(r)
		case !o.IncludeFailed && e.buildFailed(r.Ref):
			r.Status, r.Reason = StatusSkipped, "the build failed: not promoted (use --include-failed)"
			perRef[i] = []Result{r}
			e.Events.ref(r)
		default:
			pushes.Go(func() error {
				s := &slot{of: jobs}
				rs := e.pushRef(ctx, r.Ref, targets, o.PushOptions, &st, s)
				s.release()
				for j := range rs {
					rs[j].Cache = r.Cache
					e.Events.ref(rs[j])
				}
				perRef[i] = rs
				return nil
			})
		}
	})
	pushes.Wait()
	out := st.stats(start, perRef)
	out.Pulled = pst.Pulled
	out.BlobsPresent += pst.BlobsPresent
	return flatten(perRef), out
}

// buildFailed says whether a local bst2 artifact records a failed build.
func (e *Engine) buildFailed(ref string) bool {
	if e.Kind != Bst2Artifact {
		return false
	}
	en, err := e.Kind.localEntry(e.Store, ref)
	return err == nil && en.failed
}

// copyDryRun resolves ref on the sources, checks its closure there
// (Directories are read, nothing is stored) and tells per target what
// would move after de-duplication against it.
func (e *Engine) copyDryRun(ctx context.Context, ref string, targets []*Cache, o CopyOptions) []Result {
	var hit *Result
	var p pushing
	var incomplete []string
	a, err := e.resolve(ctx, ref, func(c *Cache, d digest.Digest) (bool, error) {
		en, err := e.remoteEntry(ctx, d)
		if err != nil {
			return true, err
		}
		all, missing, err := e.survey(ctx, e.storage(), e.wanted(en))
		if err != nil {
			return true, err
		}
		if len(missing) > 0 {
			incomplete = append(incomplete, incompleteOn(c, d, missing))
			return false, nil
		}
		if !o.IncludeFailed && en.failed {
			hit = &Result{Ref: ref, Cache: c.Name(), Digest: d.String(), Status: StatusSkipped, Reason: "the build failed: not promoted (use --include-failed)"}
			return true, nil
		}
		p = pushing{ref: ref, en: en, all: all, roots: e.wanted(en), refs: []string{ref}}
		hit = &Result{Ref: ref, Cache: c.Name(), Digest: d.String()}
		return true, nil
	})
	if err != nil || hit == nil || hit.Status != "" {
		res := Result{Ref: ref}
		if hit != nil {
			res = *hit
		}
		return []Result{settle(res, a, err, incomplete)}
	}
	var out []Result
	storage := filter(targets, hasStorage)
	for _, t := range targets {
		r := *hit
		r.Target = t.Name()
		if hasStorage(t) {
			r = e.pushTo(ctx, p, t, o.PushOptions, nil, r)
		} else {
			readers := storage
			if len(readers) == 0 {
				readers = e.Storage
			}
			r = e.pushIndex(ctx, p, t, readers, len(storage) > 0, o.PushOptions, r)
		}
		if r.Status == StatusWouldPush {
			r.Status = StatusWouldCopy
		}
		out = append(out, r)
	}
	return out
}
