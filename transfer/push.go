package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/words"
	"github.com/bst-cache/bst-cache/remotes"
)

// PushOptions tune Push.
type PushOptions struct {
	// Force uploads and rewrites the index even when the target already
	// names the same digest, and overwrites a different one. Without it a
	// target that names a different digest is left alone (a conflict).
	Force bool
	// DryRun reports what would move and changes nothing.
	DryRun bool
}

// Push uploads each local ref to each target: only the blobs the target
// lacks, then the index entry last. Results come per ref and target.
func (e *Engine) Push(ctx context.Context, refs []string, targets []*Cache, o PushOptions) ([]Result, Stats) {
	ctx = e.Events.bind(ctx)
	start := time.Now()
	if !o.DryRun {
		e.keyUploads(targets)
	}
	run := newPushRun()
	results := make([][]Result, len(refs))
	jobs := newSlots(e.Jobs)
	var g errgroup.Group
	g.SetLimit(e.lookahead())
	for i, ref := range refs {
		g.Go(func() error {
			results[i] = e.pushRef(ctx, ref, targets, o, run, jobs)
			for _, r := range results[i] {
				e.Events.ref(r)
			}
			return nil
		})
	}
	g.Wait()
	return flatten(results), run.stats(start, results)
}

func flatten(rss [][]Result) []Result {
	var out []Result
	for _, rs := range rss {
		out = append(out, rs...)
	}
	return out
}

// pushing is one ref on its way to the targets: its local entry, every
// blob it sends and the roots its index entry names.
type pushing struct {
	ref   string
	en    entry
	all   []digest.Digest
	roots cache.Roots
	// refs are every ref of the artifact (strong and weak), ref first.
	refs []string
	// jobs hand out the right to send bytes to one target; slot is the
	// one taken for the target the ref is going to (nil: never waits).
	jobs slots
	slot *slot
	// flight is the artifact's flight to that target when this ref
	// carries it there.
	flight *artifactFlight
}

// pushRoots is what pushing en sends: everything required, plus optional
// trees wholly present locally (BuildStream pushes a buildtree it has).
func (e *Engine) pushRoots(en entry) (all []digest.Digest, roots cache.Roots, err error) {
	all, missing, err := e.Store.ClosureOf(en.roots)
	if err != nil {
		return nil, roots, err
	}
	if len(missing) > 0 {
		return nil, roots, fmt.Errorf("the local closure is incomplete: %s missing (e.g. %s)", words.Plural(len(missing), "blob"), missing[0])
	}
	if en.virtual {
		all = append(all, en.digest)
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

// pushRef sends one local ref to every target, each taking one of jobs
// while it sends bytes.
func (e *Engine) pushRef(ctx context.Context, ref string, targets []*Cache, o PushOptions, run *pushRun, jobs slots) []Result {
	out := make([]Result, len(targets))
	for j, t := range targets {
		out[j] = Result{Ref: ref, Target: t.Name()}
	}
	p := pushing{ref: ref, jobs: jobs}
	en, err := localEntry(e.Store, e.Kind, ref)
	if err == nil {
		p.en = en
		p.all, p.roots, err = e.pushRoots(en)
		p.refs = e.allRefs(ctx, ref, en)
	}
	if err != nil {
		return failAll(out, err)
	}
	return e.pushArtifact(ctx, p, targets, o, run, out)
}

// failAll gives every target's result err: missing when it is a miss.
func failAll(out []Result, err error) []Result {
	for j := range out {
		if errors.Is(err, cache.ErrNotFound) {
			out[j].Status, out[j].Reason = StatusMissing, "not in the local store"
		} else {
			out[j] = failed(out[j], err)
		}
	}
	return out
}

// maxTargets bounds the targets an artifact is written to at once.
const maxTargets = 8

// pushArtifact sends p to every target, out holding a result per target
// to fill. The targets are written at once (up to maxTargets), each on its
// own: one that is slow, down or refusing delays and fails only its own
// result. Storage comes before any index: targets with storage first
// (each writes its own index only after its upload), then index-only
// targets, whose entry is written only once every blob is confirmed on the
// storage their readers use. On each target, the first ref of an artifact
// in run carries it; its other refs wait for that target and are done
// there where it wrote an entry naming them. A dry run goes the same way
// and writes nothing: it counts each blob once per target and says of an
// artifact's other refs that they would move with the first. With no run
// (a copy asking its targets) refs go alone and every blob a target lacks
// counts.
func (e *Engine) pushArtifact(ctx context.Context, p pushing, targets []*Cache, o PushOptions, run *pushRun, out []Result) []Result {
	storage := filter(targets, hasStorage)
	readers := storage
	if len(readers) == 0 {
		readers = e.Storage
	}
	// A dry run sent nothing to the storage targets; they would hold the
	// blobs once it ran.
	uploaded := o.DryRun && len(storage) > 0
	// Storage targets in the first pass, index-only ones in the second.
	for _, pass := range []bool{true, false} {
		var g errgroup.Group
		g.SetLimit(maxTargets)
		for j, t := range targets {
			if hasStorage(t) != pass {
				continue
			}
			g.Go(func() error {
				out[j] = e.pushTarget(ctx, p, t, readers, uploaded, o, run, out[j])
				return nil
			})
		}
		g.Wait()
	}
	return out
}

// pushTarget sends p to one target: as the artifact's carrier there, or
// done with the carrier's entry when it names p's ref. A ref waits for a
// carrier before it takes a slot: a waiting ref holds none.
func (e *Engine) pushTarget(ctx context.Context, p pushing, t *Cache, readers []*Cache, uploaded bool, o PushOptions, run *pushRun, res Result) (out Result) {
	res.Digest = p.en.digest.String()
	if run != nil {
		f, first := run.artifact(p.en.digest, t.Name())
		if first {
			p.flight = f
			defer func() { f.landed(p.ref, out) }()
		} else if err := f.wait(ctx); err != nil {
			return failed(res, err)
		} else if r, ok := f.carried(p.ref); ok {
			r.Cache = res.Cache
			return r
		}
	}
	if p.jobs != nil {
		p.slot = &slot{of: p.jobs}
		defer p.slot.release()
	}
	if hasStorage(t) {
		return e.pushTo(ctx, p, t, o, run, res)
	}
	return e.pushIndex(ctx, p, t, readers, uploaded, o, res)
}

// indexState asks a target's index what it names for the ref: the same
// digest, another one (a conflict unless forced) or nothing.
func (e *Engine) indexState(ctx context.Context, r remote, t *Cache, p pushing, o PushOptions, res Result) (same bool, done *Result) {
	d, err := e.targetLookup(ctx, r, t, p.en.kind, p.ref)
	switch {
	case err == nil && d == p.en.digest:
		return !o.Force, nil
	case err == nil && !o.Force:
		res.Status, res.Reason = StatusConflict, fmt.Sprintf("the target names %s, not %s (use --force to overwrite)", d, p.en.digest)
		return false, &res
	case err != nil && !errors.Is(err, remotes.ErrNotFound):
		t.replied(err, e.Events)
		res = failed(res, err)
		return false, &res
	}
	return false, nil
}

// targetLookup asks a target's index for ref as a pull would, in every
// kind k stands for at once (the first hit wins): a fetch the index
// refuses (Buildbarn's bb_remote_asset without an "error" fetcher) is a
// miss.
func (e *Engine) targetLookup(ctx context.Context, r remote, t *Cache, k cache.Kind, ref string) (digest.Digest, error) {
	if a, ok := ctx.Value(askedKey{}).(*asked); ok {
		return a.once(t.Name(), ref, func() (digest.Digest, error) { return e.lookupTarget(ctx, r, t, k, ref) })
	}
	return e.lookupTarget(ctx, r, t, k, ref)
}

// lookupTarget is targetLookup's question.
func (e *Engine) lookupTarget(ctx context.Context, r remote, t *Cache, k cache.Kind, ref string) (digest.Digest, error) {
	var err error
	for _, f := range lookupAll(ctx, k, r, t.caps, ref) {
		ferr := f.err
		if ferr == nil {
			return f.digest, nil
		}
		if assetRefusal(ferr) {
			t.refusedFetch(ferr, e.Events)
			ferr = fmt.Errorf("%w: %w", remotes.ErrNotFound, ferr)
		}
		if err == nil || lookupRank(ferr) > lookupRank(err) {
			err = ferr
		}
	}
	return digest.Digest{}, err
}

// lookupRank orders the ways a lookup can fail, the one to report last:
// no index for the kind, then a miss, then an error.
func lookupRank(err error) int {
	switch {
	case errors.Is(err, errNoIndex):
		return 0
	case errors.Is(err, remotes.ErrNotFound):
		return 1
	}
	return 2
}

// pushTo sends a ref to a target with storage: only the blobs it lacks,
// then its index entry (when it has an index). A dry run only asks, and
// counts the blobs no other ref of run counted for t (all of them with no
// run). A target whose index names the same digest is skipped only
// when it holds every blob; otherwise the missing blobs go and the ref is
// reported repaired.
func (e *Engine) pushTo(ctx context.Context, p pushing, t *Cache, o PushOptions, run *pushRun, res Result) Result {
	r, err := t.connect(ctx, e.Events)
	if err != nil {
		return failed(res, err)
	}
	same := false
	if hasIndex(t) {
		var done *Result
		if same, done = e.indexState(ctx, r, t, p, o, res); done != nil {
			return *done
		}
	}
	moved, err := r.FindMissing(ctx, p.all)
	t.replied(err, e.Events)
	if err != nil {
		return failed(res, err)
	}
	if o.DryRun {
		res = wouldMove(res, same, StatusWouldPush, run.tally(t, nonEmpty(moved)))
		if res.Status != StatusSkipped && hasIndex(t) {
			e.wouldWrite(ctx, r, t, p, o)
		}
		return res
	}
	if len(moved) > 0 {
		if _, err := p.slot.take(ctx); err != nil {
			return failed(res, err)
		}
	}
	blobs, bytes, err := e.send(ctx, r, t, moved, run)
	t.replied(err, e.Events)
	if err != nil {
		return failed(res, err)
	}
	t.count(blobs, bytes, 0)
	run.blobs.Add(int64(blobs))
	run.bytes.Add(bytes)
	run.present.Add(int64(len(p.all) - blobs))
	if len(moved) == 0 && (same || !hasIndex(t)) {
		res.Status, res.Reason = StatusSkipped, "the target already has it"
		return res
	}
	if hasIndex(t) {
		// A repair rewrites the entry too: a bst2 entry then names the
		// trees just added.
		if err := e.writeEntry(ctx, r, t, p, o); err != nil {
			resent, n, err := e.resend(ctx, r, t, p, o, err)
			t.count(resent, n, 0)
			run.blobs.Add(int64(resent))
			run.bytes.Add(n)
			if err != nil {
				return failed(res, err)
			}
		}
	}
	res.Status = StatusDone
	if same {
		res.Status, res.Reason = StatusRepaired, fmt.Sprintf("the target named it but lacked %s (%s), now sent", words.Plural(len(moved), "blob"), words.Plural(bytes, "byte"))
	}
	return res
}

// resend answers an index write that failed with err: when the target
// refused it for lacking blobs the entry names (a server under a quota
// evicted what this push had sent before the push could name it), it
// waits, sends what the target lacks again and writes the entry again, as
// many times as the cache's retry-limit, waiting its retry-delay, doubled
// each time. It says how many blobs and bytes it sent, and the error that
// ends it (nil once the entry is written).
func (e *Engine) resend(ctx context.Context, r remote, t *Cache, p pushing, o PushOptions, err error) (blobs int, bytes int64, _ error) {
	wait := t.Config.Connection.RetryDelay
	for range t.Config.Connection.RetryLimit {
		if !errors.Is(err, remotes.ErrBlobsMissing) {
			return blobs, bytes, err
		}
		e.Events.info(fmt.Sprintf("%s: cache %s lost blobs before the ref named them: sending them again in %s", p.ref, t.Name(), wait))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return blobs, bytes, ctx.Err()
		}
		wait *= 2
		lost, ferr := r.FindMissing(ctx, p.all)
		if ferr != nil {
			return blobs, bytes, ferr
		}
		e.Events.plan(sizeOf(lost))
		n, serr := r.Send(ctx, lost, e.openCounted, t.Config.MaxConcurrency)
		blobs, bytes = blobs+len(lost), bytes+n
		if serr != nil {
			return blobs, bytes, serr
		}
		if err = e.writeEntry(ctx, r, t, p, o); err == nil {
			return blobs, bytes, nil
		}
	}
	return blobs, bytes, err
}

// writeEntry writes the ref's index entry on t, in one call under the ref
// and each other ref of its artifact that t does not name another digest
// under: unless forced, a push never clobbers. The carrier of the
// artifact records what it wrote, for the artifact's other refs.
func (e *Engine) writeEntry(ctx context.Context, r remote, t *Cache, p pushing, o PushOptions) error {
	refs := e.entryRefs(ctx, r, t, p, o)
	err := writeIndex(ctx, r, t.caps, refs, p.en, p.roots)
	t.replied(err, e.Events)
	if err == nil {
		p.flight.wrote(refs)
	}
	return err
}

// wouldWrite is a dry run's writeEntry: the carrier of the artifact
// records the refs its entry on t would be written under, for the
// artifact's other refs, and writes nothing.
func (e *Engine) wouldWrite(ctx context.Context, r remote, t *Cache, p pushing, o PushOptions) {
	if p.flight != nil {
		p.flight.wrote(e.entryRefs(ctx, r, t, p, o))
	}
}

// entryRefs are the refs p's entry on t is written under: p.ref, and
// each other ref of its artifact that t names no other digest under.
func (e *Engine) entryRefs(ctx context.Context, r remote, t *Cache, p pushing, o PushOptions) []string {
	if o.Force {
		return p.refs
	}
	refs := []string{p.ref}
	for _, other := range p.refs[1:] {
		// A sibling that cannot be asked is left as it is.
		if d, err := e.targetLookup(ctx, r, t, p.en.kind, other); errors.Is(err, remotes.ErrNotFound) || (err == nil && d == p.en.digest) {
			refs = append(refs, other)
		}
	}
	return refs
}

// send uploads moved, which t lacked when asked, and says how many blobs
// and bytes this ref sent. A blob another ref of the run is sending to t
// is waited for instead, and sent only if that upload failed.
func (e *Engine) send(ctx context.Context, r remote, t *Cache, moved []digest.Digest, run *pushRun) (int, int64, error) {
	open := e.openCounted
	mine, theirs := run.claim(t, moved)
	e.Events.plan(sizeOf(mine))
	bytes, err := r.Send(ctx, mine, open, t.Config.MaxConcurrency)
	run.release(t, mine, err == nil)
	if err != nil || len(theirs) == 0 {
		return len(mine), bytes, err
	}
	var waited []digest.Digest
	for d, done := range theirs {
		select {
		case <-done:
		case <-ctx.Done():
			return len(mine), bytes, ctx.Err()
		}
		waited = append(waited, d)
	}
	rest, err := r.FindMissing(ctx, waited)
	if err != nil {
		return len(mine), bytes, err
	}
	e.Events.plan(sizeOf(rest))
	more, err := r.Send(ctx, rest, open, t.Config.MaxConcurrency)
	return len(mine) + len(rest), bytes + more, err
}

// openCounted opens a local blob to send, its bytes counted as progress.
func (e *Engine) openCounted(d digest.Digest) (io.ReadCloser, error) {
	rc, err := e.Store.Open(d)
	if err != nil {
		return nil, err
	}
	return countingFile{rc, e.Events.bytes}, nil
}

// wouldMove is a dry run's verdict for a target that lacks missing.
func wouldMove(res Result, same bool, status Status, missing []digest.Digest) Result {
	missing = nonEmpty(missing)
	res.Blobs, res.Bytes = int64(len(missing)), sizeOf(missing)
	switch {
	case same && len(missing) == 0:
		res.Status, res.Reason = StatusSkipped, "the target already has it"
	case same:
		res.Status, res.Reason = StatusWouldRepair, fmt.Sprintf("the target names it but lacks %s (%s)", words.Plural(res.Blobs, "blob"), words.Plural(res.Bytes, "byte"))
	default:
		res.Status, res.Reason = status, fmt.Sprintf("would send %s (%s)", words.Plural(res.Blobs, "blob"), words.Plural(res.Bytes, "byte"))
	}
	return res
}

// pushIndex writes a ref to an index-only target once every blob it names
// is confirmed on readers, the storage the target's readers use.
func (e *Engine) pushIndex(ctx context.Context, p pushing, t *Cache, readers []*Cache, uploaded bool, o PushOptions, res Result) Result {
	r, err := t.connect(ctx, e.Events)
	if err != nil {
		return failed(res, err)
	}
	same, done := e.indexState(ctx, r, t, p, o, res)
	if done != nil {
		return *done
	}
	if uploaded {
		res.Status, res.Reason = StatusWouldPush, "would write the index entry once the storage targets hold the blobs"
		e.wouldWrite(ctx, r, t, p, o)
		return res
	}
	if len(readers) == 0 {
		return failed(res, fmt.Errorf("index-only target %s: no storage cache is configured or targeted to hold the blobs its entry names", t.Name()))
	}
	missing, err := e.confirm(ctx, readers, p.all)
	if err != nil {
		return failed(res, fmt.Errorf("cannot confirm the blobs on %s, index entry not written: %w", names(readers), err))
	}
	if len(missing) > 0 {
		return failed(res, fmt.Errorf("%s (e.g. %s) on no storage cache readers of %s use (%s): index entry not written", words.IsAre(len(missing), "blob"), missing[0], t.Name(), names(readers)))
	}
	switch {
	case same:
		res.Status, res.Reason = StatusSkipped, "the target already has it"
	case o.DryRun:
		res.Status, res.Reason = StatusWouldPush, "would write the index entry"
		e.wouldWrite(ctx, r, t, p, o)
	default:
		if err := e.writeEntry(ctx, r, t, p, o); err != nil {
			return failed(res, err)
		}
		res.Status = StatusDone
	}
	return res
}
