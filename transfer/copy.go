package transfer

import (
	"context"
	"errors"
	"sync"
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
// blobs it already holds. Each ref goes to its targets at once, each on
// its own, with a result per target: a target is asked first, one that is
// down fails the ref there, and one that names the digest the sources
// name and holds its whole closure is skipped, before any file is pulled
// for it. The ref is pulled once, for the first target that lacks it and
// is not down by the time a pull slot is free, and pushed to each target
// as soon as it is local, while other refs are still pulled, so both
// sides stay busy. Staged objects stay in the local store for the next
// run. A dry run checks as many refs at once as a run looks up ahead.
// Results come in the order of refs, then of targets.
func (e *Engine) Copy(ctx context.Context, refs []string, targets []*Cache, o CopyOptions) ([]Result, Stats) {
	ctx = withSurveys(e.Events.bind(ctx))
	start := time.Now()
	run := newPushRun()
	perRef := make([][]Result, len(refs))
	// Refs are looked up and checked ahead of those moving bytes; a dry
	// run moves none.
	var g errgroup.Group
	g.SetLimit(e.lookahead())
	each := func(copyOne func(ref string) []Result) {
		for i, ref := range refs {
			g.Go(func() error {
				perRef[i] = copyOne(ref)
				for _, r := range perRef[i] {
					e.Events.ref(r)
				}
				return nil
			})
		}
		g.Wait()
	}
	if o.DryRun {
		each(func(ref string) []Result {
			rs := e.copyDryRun(ctx, ref, targets, o, run)
			if len(rs) == 1 && rs[0].Target == "" {
				rs = eachTarget(rs[0], targets)
			}
			return rs
		})
		return flatten(perRef), run.stats(start, perRef)
	}
	e.keyUploads(targets)
	pulls, pushes := newSlots(e.Jobs), newSlots(e.Jobs)
	// An artifact's refs are written at once: its pushes wait for them,
	// and pulls going on meanwhile would run ahead of targets found down.
	f := newFetcher(e.Store, e.storage(), e.Strict, e.Events, nil)
	each(func(ref string) []Result {
		src := &sourced{ref: ref}
		rs := make([]Result, len(targets))
		var tg errgroup.Group
		tg.SetLimit(maxTargets)
		for j, t := range targets {
			tg.Go(func() error {
				rs[j] = e.copyTo(ctx, f, src, t, o, run, pulls, pushes)
				return nil
			})
		}
		tg.Wait()
		return rs
	})
	out := run.stats(start, perRef)
	out.Pulled = Flow{f.blobs.Load(), f.bytes.Load()}
	out.BlobsPresent += f.present.Load()
	return flatten(perRef), out
}

// eachTarget is the sources' verdict on a ref (missing, failed, a failed
// build) as a result per target.
func eachTarget(r Result, targets []*Cache) []Result {
	out := make([]Result, len(targets))
	for j, t := range targets {
		out[j] = r
		out[j].Target = t.Name()
	}
	return out
}

// sourced is one ref of a copy, pulled once for all its targets.
type sourced struct {
	ref    string
	mu     sync.Mutex
	pulled bool
	res    Result
}

// copyTo copies src's ref to t: t is asked first, and the ref pulled and
// pushed only when t is still to be written.
func (e *Engine) copyTo(ctx context.Context, f *fetcher, src *sourced, t *Cache, o CopyOptions, run *pushRun, pulls, pushes slots) Result {
	res, pending := e.askTarget(ctx, src.ref, t, o, run)
	if !pending {
		return res
	}
	r, err := e.pullFor(ctx, f, src, t, o, pulls)
	switch {
	case err != nil:
		return failed(res, err)
	case r.Status != StatusDone:
		r.Target = t.Name()
		return r
	}
	res = e.pushRef(ctx, src.ref, []*Cache{t}, o.PushOptions, run, pushes)[0]
	res.Cache = r.Cache
	return res
}

// pullFor pulls src's ref for t unless it was pulled already for another
// target. It waits for one of pulls first, and pulls nothing when t
// proved down meanwhile (a write another ref made found it unreachable or
// refusing): err then says why.
func (e *Engine) pullFor(ctx context.Context, f *fetcher, src *sourced, t *Cache, o CopyOptions, pulls slots) (Result, error) {
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.pulled {
		return src.res, nil
	}
	s := &slot{of: pulls}
	defer s.release()
	if _, err := s.take(ctx); err != nil {
		return Result{}, err
	}
	if err := t.down(); err != nil {
		return Result{}, err
	}
	r := e.pullOne(ctx, f, src.ref, true, s)
	if r.Status == StatusDone && !o.IncludeFailed && e.buildFailed(src.ref) {
		r.Status, r.Reason = StatusSkipped, "the build failed: not promoted (use --include-failed)"
	}
	src.pulled, src.res = true, r
	return r, nil
}

// askTarget asks t about ref before anything is pulled for it: pending
// says t is still to be written, else res is its result. A target that is
// down fails the ref. When an index target names a digest, the ref is
// resolved on the sources and its closure checked there as a dry run
// would (Directories and FindMissingBlobs, no file contents): a target
// that names the same digest and holds the whole closure is skipped (done
// when another ref of the artifact wrote it there in this run), one that
// names another is a conflict.
func (e *Engine) askTarget(ctx context.Context, ref string, t *Cache, o CopyOptions, run *pushRun) (res Result, pending bool) {
	// The dry run below asks t what it names for ref again: it is told
	// what t just answered.
	ctx = withAsked(ctx)
	res = Result{Ref: ref, Target: t.Name()}
	r, err := t.connect(ctx, e.Events)
	names := false
	if err == nil && !o.Force && hasIndex(t) {
		switch _, err = e.targetLookup(ctx, r, t, e.Kind, ref); {
		case err == nil:
			names = true
		case errors.Is(err, remotes.ErrNotFound):
			err = nil
		default:
			t.replied(err, e.Events)
		}
	}
	if err != nil {
		return failed(res, err), false
	}
	if !names {
		return res, true
	}
	dry := o
	dry.DryRun = true
	res = e.copyDryRun(ctx, ref, []*Cache{t}, dry, nil)[0]
	if res.Target == "" {
		// The sources decided: missing, failed, or a failed build.
		res.Target = t.Name()
		return res, false
	}
	switch res.Status {
	case StatusWouldCopy, StatusWouldRepair:
		return Result{Ref: ref, Target: t.Name()}, true
	}
	res.Blobs, res.Bytes = 0, 0
	if d, err := digest.NewFromString(res.Digest); err == nil && res.Status == StatusSkipped {
		if c, ok := run.carriedHere(ctx, d, ref, t.Name()); ok {
			c.Cache = res.Cache
			res = c
		}
	}
	return res, false
}

// asked remembers what each target's index answered for one ref, for a
// context from withAsked: a copy asks its targets first, and its dry run
// asks them again a moment later. It is safe for concurrent use.
type asked struct {
	mu sync.Mutex
	m  map[string]answered
}

type answered struct {
	digest digest.Digest
	err    error
}

type askedKey struct{}

// withAsked gives ctx a memory of its own of what targets answered.
func withAsked(ctx context.Context) context.Context {
	return context.WithValue(ctx, askedKey{}, &asked{m: map[string]answered{}})
}

// once returns what target answered for ref, asking it first when it has
// not been asked.
func (a *asked) once(target, ref string, ask func() (digest.Digest, error)) (digest.Digest, error) {
	key := target + "\x00" + ref
	a.mu.Lock()
	defer a.mu.Unlock()
	if got, ok := a.m[key]; ok {
		return got.digest, got.err
	}
	d, err := ask()
	a.m[key] = answered{d, err}
	return d, err
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
