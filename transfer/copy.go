package transfer

import (
	"context"
	"errors"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/remotes"
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
// blobs it already holds. The targets are asked first: one that is down
// fails the ref, and one that names the digest the sources name and holds
// its whole closure is skipped, before any file is pulled for them. Each
// ref is pushed as soon as it is local, while other refs are still
// pulled, so both sides stay busy. Staged objects stay in the local store
// for the next run. Results come in the order of refs.
func (e *Engine) Copy(ctx context.Context, refs []string, targets []*Cache, o CopyOptions) ([]Result, Stats) {
	ctx = e.Events.bind(ctx)
	start := time.Now()
	run := newPushRun()
	perRef := make([][]Result, len(refs))
	if o.DryRun {
		for i, ref := range refs {
			perRef[i] = e.copyDryRun(ctx, ref, targets, o, run)
			for _, r := range perRef[i] {
				e.Events.ref(r)
			}
		}
		return flatten(perRef), run.stats(start, perRef)
	}
	e.keyUploads(targets)
	f := newFetcher(e.Store, e.storage(), e.Strict, e.Events)
	pulls, pushes := newSlots(e.Jobs), newSlots(e.Jobs)
	var g errgroup.Group
	g.SetLimit(e.lookahead())
	for i, ref := range refs {
		g.Go(func() error {
			perRef[i] = e.copyRef(ctx, f, ref, targets, o, run, pulls, pushes)
			for _, r := range perRef[i] {
				e.Events.ref(r)
			}
			return nil
		})
	}
	g.Wait()
	out := run.stats(start, perRef)
	out.Pulled = Flow{f.blobs.Load(), f.bytes.Load()}
	out.BlobsPresent += f.present.Load()
	return flatten(perRef), out
}

// copyRef copies one ref: the targets are asked first, and only for those
// still to be written is it pulled and pushed.
func (e *Engine) copyRef(ctx context.Context, f *fetcher, ref string, targets []*Cache, o CopyOptions, run *pushRun, pulls, pushes slots) []Result {
	out, pending := e.askTargets(ctx, ref, targets, o, run)
	if len(pending) == 0 {
		return out
	}
	s := &slot{of: pulls}
	r := e.pullOne(ctx, f, ref, true, s)
	s.release()
	switch {
	case r.Status != StatusDone:
		return append(settled(out), r)
	case !o.IncludeFailed && e.buildFailed(ref):
		r.Status, r.Reason = StatusSkipped, "the build failed: not promoted (use --include-failed)"
		return append(settled(out), r)
	}
	s = &slot{of: pushes}
	rs := e.pushRef(ctx, ref, pending, o.PushOptions, run, s)
	s.release()
	for j, t := range pending {
		rs[j].Cache = r.Cache
		for k := range out {
			if out[k].Target == t.Name() {
				out[k] = rs[j]
			}
		}
	}
	return out
}

// settled drops the results of targets still pending.
func settled(rs []Result) []Result {
	var out []Result
	for _, r := range rs {
		if r.Status != "" {
			out = append(out, r)
		}
	}
	return out
}

// askTargets asks each target about ref before anything is pulled for it,
// and returns a result per target (empty for those still to be written)
// and the targets still to be written. A target that is down fails the
// ref. When an index target names a digest, the ref is resolved on the
// sources and its closure checked there as a dry run would (Directories
// and FindMissingBlobs, no file contents): a target that names the same
// digest and holds the whole closure is skipped (done when another ref of
// the artifact wrote it there in this run), one that names another is a
// conflict.
func (e *Engine) askTargets(ctx context.Context, ref string, targets []*Cache, o CopyOptions, run *pushRun) (out []Result, pending []*Cache) {
	out = make([]Result, len(targets))
	names := false
	var live []*Cache
	for j, t := range targets {
		out[j] = Result{Ref: ref, Target: t.Name()}
		r, err := t.connect(ctx, e.Events)
		if err == nil && !o.Force && hasIndex(t) {
			switch _, err = e.targetLookup(ctx, r, t, e.Kind, ref); {
			case err == nil:
				names = true
			case errors.Is(err, remotes.ErrNotFound):
				err = nil
			default:
				t.asked(err)
			}
		}
		if err != nil {
			out[j] = failed(out[j], err)
			continue
		}
		live = append(live, t)
	}
	if !names {
		return out, live
	}
	dry := o
	dry.DryRun = true
	rs := e.copyDryRun(ctx, ref, live, dry, nil)
	if len(rs) == 1 && rs[0].Target == "" {
		// The sources decided: missing, failed, or a failed build.
		return append(settled(out), rs[0]), nil
	}
	for j, r := range rs {
		switch r.Status {
		case StatusWouldCopy, StatusWouldRepair:
			pending = append(pending, live[j])
			continue
		}
		r.Blobs, r.Bytes = 0, 0
		if d, err := digest.NewFromString(r.Digest); err == nil && r.Status == StatusSkipped {
			if c, ok := run.carriedHere(ctx, d, ref, r.Target); ok {
				c.Cache = r.Cache
				r = c
			}
		}
		for k := range out {
			if out[k].Target == r.Target {
				out[k] = r
			}
		}
	}
	return out, pending
}

// buildFailed says whether a local bst2 artifact records a failed build.
func (e *Engine) buildFailed(ref string) bool {
	en, err := localEntry(e.Store, e.Kind, ref)
	return err == nil && en.failed
}

// copyDryRun resolves ref on the sources, checks its closure there
// (Directories are read, nothing is stored) and tells per target what
// would move after de-duplication against it and, with a run, against
// what the run's other refs would move there: an artifact's other refs
// would move with the first, and each blob counts once per target.
func (e *Engine) copyDryRun(ctx context.Context, ref string, targets []*Cache, o CopyOptions, run *pushRun) []Result {
	var hit *Result
	var p pushing
	var incomplete []string
	a, err := e.resolve(ctx, ref, func(c *Cache, k cache.Kind, d digest.Digest) (bool, error) {
		en, err := e.remoteEntry(ctx, k, d)
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
	if run != nil {
		// The index entry names them all, as the real run's would.
		p.refs = e.allRefs(ctx, ref, p.en)
	}
	out := make([]Result, len(targets))
	for j, t := range targets {
		out[j] = *hit
		out[j].Target = t.Name()
	}
	out = e.pushArtifact(ctx, p, targets, o.PushOptions, run, out)
	for j := range out {
		if out[j].Status == StatusWouldPush {
			out[j].Status = StatusWouldCopy
		}
	}
	return out
}
