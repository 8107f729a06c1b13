package transfer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"

	"github.com/bst-cache/bst-cache/remotes"
)

// CopyOptions tune Copy.
type CopyOptions struct {
	PushOptions
	// IncludeFailed promotes bst2 artifacts whose build failed.
	IncludeFailed bool
}

// Copy moves refs from the engine's caches (the sources, in priority
// order) to targets through the local store: a pull, then a push that
// leaves a target naming a different digest alone unless forced. Each ref
// is pushed as soon as it is local, while other refs are still pulled, so
// both sides stay busy. Staged objects stay in the local store for the
// next run. Results come in the order of refs.
func (e *Engine) Copy(ctx context.Context, refs []string, targets []*Cache, o CopyOptions) ([]Result, Stats) {
	start := time.Now()
	o.NoClobber = true
	if o.DryRun {
		return e.copyDryRun(ctx, refs, targets, o), Stats{Seconds: time.Since(start).Seconds()}
	}
	// Pulls report through the caller only when they fail: a ref's result
	// is its push.
	puller := *e
	puller.Events.OnRef = nil
	var st pushStats
	perRef := make([][]Result, len(refs))
	var pushes errgroup.Group
	pushes.SetLimit(max(e.Jobs, 1))
	_, pst := puller.pull(ctx, refs, func(i int, r Result) {
		switch {
		case r.Status != StatusDone && r.Status != StatusSkipped:
			perRef[i] = []Result{r}
			e.Events.ref(r)
		case !o.IncludeFailed && e.buildFailed(r.Ref):
			r.Status, r.Reason = StatusSkipped, "the build failed: not promoted (use --include-failed)"
			perRef[i] = []Result{r}
			e.Events.ref(r)
		default:
			pushes.Go(func() error {
				for _, t := range targets {
					pr := e.pushOne(ctx, r.Ref, t, o.PushOptions, &st)
					pr.Cache = r.Cache
					perRef[i] = append(perRef[i], pr)
					e.Events.ref(pr)
				}
				return nil
			})
		}
	})
	pushes.Wait()
	var results []Result
	for _, rs := range perRef {
		results = append(results, rs...)
	}
	return results, Stats{
		Blobs: pst.Blobs + st.blobs.Load(), Bytes: pst.Bytes + st.bytes.Load(),
		BlobsPresent: pst.BlobsPresent + st.present.Load(), Seconds: time.Since(start).Seconds(),
	}
}

// buildFailed says whether a local bst2 artifact records a failed build.
func (e *Engine) buildFailed(ref string) bool {
	if e.Kind != Bst2Artifact {
		return false
	}
	en, err := e.Kind.localEntry(e.Store, ref)
	return err == nil && en.failed
}

// copyDryRun asks the indexes only: where each ref would come from and
// what each target holds. Blob counts come from the push dry run when the
// local store already has the ref.
func (e *Engine) copyDryRun(ctx context.Context, refs []string, targets []*Cache, o CopyOptions) []Result {
	var results []Result
	var st pushStats
	for _, ref := range refs {
		src, d, err := e.firstHit(ctx, ref)
		if err != nil {
			r := Result{Ref: ref, Status: StatusMissing, Reason: "in no cache"}
			if !errors.Is(err, remotes.ErrNotFound) {
				r = failed(r, err)
			}
			results = append(results, r)
			e.Events.ref(r)
			continue
		}
		for _, t := range targets {
			r := Result{Ref: ref, Cache: src, Target: t.Name(), Digest: d.String(), Status: StatusDone}
			tr, err := t.connect(ctx, e.Events)
			if err != nil {
				r = failed(r, err)
			} else if td, err := e.Kind.lookup(ctx, tr, t.caps, ref); err == nil && td == d && !o.Force {
				r.Status, r.Reason = StatusSkipped, "the target already has it"
			} else if err == nil && td != d && !o.Force {
				r.Status, r.Reason = StatusConflict, fmt.Sprintf("the target names %s, not %s", td, d)
			} else if en, lerr := e.Kind.localEntry(e.Store, ref); lerr == nil && en.digest == d {
				r = e.pushOne(ctx, ref, t, o.PushOptions, &st)
				r.Cache = src
			} else {
				r.Reason = "dry run: would copy (blob counts known once staged locally)"
			}
			results = append(results, r)
			e.Events.ref(r)
		}
	}
	return results
}

// firstHit finds the first index cache naming ref.
func (e *Engine) firstHit(ctx context.Context, ref string) (string, digest.Digest, error) {
	for _, c := range filter(e.Caches, hasIndex) {
		r, err := c.connect(ctx, e.Events)
		if err != nil {
			continue
		}
		d, err := e.Kind.lookup(ctx, r, c.caps, ref)
		if err == nil {
			return c.Name(), d, nil
		}
		if !errors.Is(err, remotes.ErrNotFound) && !errors.Is(err, errNoIndex) {
			e.Events.Warn(ref + ": " + c.describe(err))
		}
	}
	return "", digest.Digest{}, remotes.ErrNotFound
}
