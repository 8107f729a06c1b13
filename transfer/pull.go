package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/words"
)

// Status is how a ref ended.
type Status string

// The statuses.
const (
	StatusDone     Status = "done"     // moved
	StatusSkipped  Status = "skipped"  // nothing to move: already complete where it goes
	StatusRepaired Status = "repaired" // the target named it but lacked blobs, now sent
	StatusMissing  Status = "missing"  // every cache that could hold it answered that it does not
	StatusFailed   Status = "failed"   // an error, a cache that could not be asked, or incomplete everywhere
	StatusConflict Status = "conflict" // a target names another digest
	StatusRemoved  Status = "removed"  // deleted from the local store (rm)
	// StatusInterrupted: the run was interrupted (Ctrl-C, SIGTERM) before
	// the ref was done; nothing of it was left half-written.
	StatusInterrupted Status = "interrupted"

	// Dry runs say what would happen; nothing moves.
	StatusWouldPull   Status = "would-pull"
	StatusWouldPush   Status = "would-push"
	StatusWouldCopy   Status = "would-copy"
	StatusWouldRepair Status = "would-repair"
	StatusWouldRemove Status = "would-remove"
)

// Result is one ref's outcome.
type Result struct {
	Ref string `json:"ref"`
	// Element is the BuildStream element the caller named the ref by;
	// the engine leaves it to the caller.
	Element string `json:"element,omitempty"`
	Status  Status `json:"status"`
	// Cache served a pull; Target received a push.
	Cache  string `json:"cache,omitempty"`
	Target string `json:"target,omitempty"`
	Digest string `json:"digest,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Blobs and Bytes are what a dry run would move for this ref (after
	// de-duplication against where it goes).
	Blobs int64 `json:"blobs,omitempty"`
	Bytes int64 `json:"bytes,omitempty"`
}

// Engine runs transfers for one invocation.
type Engine struct {
	Store *cache.Store
	// Kind is the kind of refs: cache.KindArtifact (no format set) looks
	// each ref up as either format.
	Kind   cache.Kind
	Caches []*Cache
	// Storage are the storage caches readers of an index use, for when
	// the caches at hand have none: copy's index-only sources take blobs
	// from them, push confirms index-only targets' blobs on them.
	Storage []*Cache
	// Jobs bounds the refs that move bytes at once; up to 32 times as
	// many (at most 1,024) are looked up and checked ahead of them, which
	// costs round trips only. Blob requests to each cache are bounded by
	// its max-concurrency.
	Jobs int
	// Strict turns any cache error into a failure
	// (--fail-on-cache-error; BuildStream's strict mode is PullOptions.Weak).
	Strict bool
	// WithBuildtrees also moves a bst2 artifact's optional trees.
	WithBuildtrees bool
	Events         Events
	// shared, for a long-lived engine (a Mirror), is what all its pulls
	// share; nil gives each Pull its own.
	shared *shared
}

// Stats are the totals of a run.
type Stats struct {
	// Pulled came into the local store; Pushed went to targets. A copy
	// has both: what it promotes crosses the wire twice.
	Pulled Flow `json:"pulled"`
	Pushed Flow `json:"pushed"`
	// BlobsPresent were already where they were going.
	BlobsPresent int64 `json:"blobs_present"`
	// WouldBlobs and WouldBytes are what a dry run would move.
	WouldBlobs int64   `json:"blobs_would_transfer"`
	WouldBytes int64   `json:"bytes_would_transfer"`
	Seconds    float64 `json:"seconds"`
}

// Add adds the totals of another run (a later batch of refs) to s.
func (s *Stats) Add(o Stats) {
	s.Pulled.Blobs += o.Pulled.Blobs
	s.Pulled.Bytes += o.Pulled.Bytes
	s.Pushed.Blobs += o.Pushed.Blobs
	s.Pushed.Bytes += o.Pushed.Bytes
	s.BlobsPresent += o.BlobsPresent
	s.WouldBlobs += o.WouldBlobs
	s.WouldBytes += o.WouldBytes
	s.Seconds += o.Seconds
}

// Flow is what moved one way.
type Flow struct {
	Blobs int64 `json:"blobs"`
	Bytes int64 `json:"bytes"`
}

// hasIndex and hasStorage pick caches by configured type.
func hasIndex(c *Cache) bool   { return c.Config.Type.HasIndex() }
func hasStorage(c *Cache) bool { return c.Config.Type.HasStorage() }

// storage is where blobs come from: the storage caches at hand, else the
// readers' storage caches.
func (e *Engine) storage() []*Cache {
	if s := filter(e.Caches, hasStorage); len(s) > 0 {
		return s
	}
	return e.Storage
}

func filter(cs []*Cache, keep func(*Cache) bool) []*Cache {
	var out []*Cache
	for _, c := range cs {
		if keep(c) {
			out = append(out, c)
		}
	}
	return out
}

// PullOptions tune Pull.
type PullOptions struct {
	// DryRun resolves refs and sizes their trees (Directories are read,
	// nothing is stored) and reports what would move.
	DryRun bool
	// Evidence makes the caches the only evidence (copy): a ref is
	// resolved there even when it is local, and blobs held locally count
	// only once a storage cache confirms it has them.
	Evidence bool
	// Weak maps refs to the same artifacts' weak refs, for BuildStream's
	// non-strict mode: a ref that every cache answered it does not hold
	// is pulled by its weak ref instead (pullWeak).
	Weak map[string]string
}

// Pull fetches each ref from the caches into the local store, refs
// concurrently, and reports each result through Events and in the slice
// (in the order of refs).
func (e *Engine) Pull(ctx context.Context, refs []string, o PullOptions) ([]Result, Stats) {
	ctx = e.Events.bind(ctx)
	results, st := e.pull(ctx, refs, o)
	return e.pullWeak(ctx, results, st, o)
}

// pull is Pull without the non-strict second round.
func (e *Engine) pull(ctx context.Context, refs []string, o PullOptions) ([]Result, Stats) {
	start := time.Now()
	f, jobs := e.run()
	results := make([]Result, len(refs))
	var g errgroup.Group
	g.SetLimit(e.lookahead())
	for i, ref := range refs {
		g.Go(func() error {
			if o.DryRun {
				results[i] = e.pullDryRun(ctx, ref)
			} else {
				s := &slot{of: jobs}
				results[i] = e.pullOne(ctx, f, ref, o.Evidence, s)
				s.release()
			}
			e.Events.ref(results[i])
			return nil
		})
	}
	g.Wait()
	st := Stats{Pulled: Flow{f.blobs.Load(), f.bytes.Load()}, BlobsPresent: f.present.Load(), Seconds: time.Since(start).Seconds()}
	for _, r := range results {
		st.WouldBlobs += r.Blobs
		st.WouldBytes += r.Bytes
	}
	return results, st
}

// run is the fetcher and slots of one pull: its own, or those a
// long-lived engine shares.
func (e *Engine) run() (*fetcher, slots) {
	if e.shared != nil {
		return e.shared.f, e.shared.jobs
	}
	jobs := newSlots(e.Jobs)
	return newFetcher(e.Store, e.storage(), e.Strict, e.Events, jobs), jobs
}

// complete says whether the local store holds e's whole closure.
func (e *Engine) complete(en entry) (bool, error) {
	_, missing, err := e.Store.ClosureOf(e.wanted(en))
	return err == nil && len(missing) == 0, err
}

// wanted is what moving en takes: its required roots, and its optional
// trees with --with-buildtrees.
func (e *Engine) wanted(en entry) cache.Roots {
	roots := en.roots
	if e.WithBuildtrees {
		roots.Add(en.optional)
	}
	return roots
}

// localHit reports a ref the local store already holds complete, with
// its entry.
func (e *Engine) localHit(ref string) (Result, entry, bool) {
	en, err := localEntry(e.Store, e.Kind, ref)
	if err != nil {
		return Result{}, entry{}, false
	}
	if ok, _ := e.complete(en); !ok {
		return Result{}, entry{}, false
	}
	return Result{Ref: ref, Status: StatusSkipped, Cache: "local", Digest: en.digest.String(), Reason: "already in the local store"}, en, true
}

// pullOne walks the index caches for ref and fetches the first hit whose
// closure some storage cache completes. The local ref is written last.
func (e *Engine) pullOne(ctx context.Context, f *fetcher, ref string, evidence bool, s *slot) Result {
	if !evidence {
		if res, en, ok := e.localHit(ref); ok {
			if err := e.writeRefs(ctx, f, ref, en, false); err != nil {
				return failed(res, err)
			}
			e.Events.info(ref + ": complete in the local store: skipped")
			return res
		}
	}
	res := Result{Ref: ref}
	var incomplete []string
	a, err := e.resolve(ctx, ref, func(c *Cache, k cache.Kind, d digest.Digest) (bool, error) {
		w := &watch{cache: c, evidence: evidence, slot: s}
		missing, err := e.materialize(ctx, f, ref, k, d, w)
		if err != nil {
			return true, err
		}
		if w.lacks > 0 && hasStorage(c) {
			e.Events.Warn(fmt.Sprintf("%s: cache %s (%s) names it but lacks %d of its blobs", ref, c.Name(), c.Config.URL, w.lacks))
		}
		if len(missing) == 0 {
			res.Status, res.Cache, res.Digest = StatusDone, c.Name(), d.String()
			return true, nil
		}
		reason := incompleteOn(c, d, missing)
		e.Events.Warn(fmt.Sprintf("%s: incomplete: %s", ref, reason))
		incomplete = append(incomplete, reason)
		return false, nil
	})
	return settle(res, a, err, incomplete)
}

// pullDryRun resolves ref and sizes what a pull would move: the blobs of
// the first complete hit that the local store lacks.
func (e *Engine) pullDryRun(ctx context.Context, ref string) Result {
	if res, _, ok := e.localHit(ref); ok {
		return res
	}
	res := Result{Ref: ref}
	var incomplete []string
	a, err := e.resolve(ctx, ref, func(c *Cache, k cache.Kind, d digest.Digest) (bool, error) {
		need, missing, err := e.surveyHit(ctx, k, d)
		if err != nil {
			return true, err
		}
		if len(missing) > 0 {
			incomplete = append(incomplete, incompleteOn(c, d, missing))
			return false, nil
		}
		res.Status, res.Cache, res.Digest = StatusWouldPull, c.Name(), d.String()
		res.Blobs, res.Bytes = int64(len(need)), sizeOf(need)
		res.Reason = fmt.Sprintf("would pull %s (%s)", words.Plural(res.Blobs, "blob"), words.Plural(res.Bytes, "byte"))
		return true, nil
	})
	return settle(res, a, err, incomplete)
}

// settle ends a ref after the index walk: an error fails it, a hit stands,
// hits incomplete everywhere fail it, and otherwise it is missing or
// failed by how the caches answered.
func settle(res Result, a *answers, err error, incomplete []string) Result {
	switch {
	case err != nil:
		return failed(res, err)
	case res.Status != "":
		return res
	case len(incomplete) > 0:
		res.Status, res.Reason = StatusFailed, "incomplete everywhere: "+strings.Join(incomplete, "; ")
		if !a.complete() {
			res.Reason += "; " + a.reason()
		}
		return res
	}
	return a.missingOrFailed(res)
}

// surveyHit sizes what an index hit names without storing anything:
// need is what the local store lacks, missing what no storage cache has
// of it.
func (e *Engine) surveyHit(ctx context.Context, k cache.Kind, d digest.Digest) (need, missing []digest.Digest, err error) {
	en, err := e.remoteEntry(ctx, k, d)
	if err != nil {
		return nil, nil, err
	}
	all, gone, err := e.survey(ctx, e.storage(), e.wanted(en))
	if err != nil {
		return nil, nil, err
	}
	if need, err = e.Store.Missing(nonEmpty(all)); err != nil {
		return nil, nil, err
	}
	// Only what must move has to be somewhere.
	needed := setOf(need)
	for _, m := range gone {
		if needed[m] {
			missing = append(missing, m)
		}
	}
	return need, missing, nil
}

// remoteEntry is what an index hit names, reading a bst2 proto from the
// local store or the first storage cache that has it (nothing is stored).
func (e *Engine) remoteEntry(ctx context.Context, k cache.Kind, d digest.Digest) (entry, error) {
	if k == cache.KindBst1Artifact {
		return entryFor(k, d, nil)
	}
	data, err := e.Store.ReadBlob(d)
	if err != nil {
		if data, err = readFirst(ctx, e, e.storage(), d); err != nil {
			return entry{}, err
		}
	}
	return entryFor(k, d, data)
}

// materialize fetches what an index hit names (a ref of kind k) and
// writes the local ref once all of it is local. It returns the blobs no
// cache had. With w.evidence, blobs that were already local must be
// confirmed on the storage caches too. A new store takes the layout of
// the first artifact written to it.
func (e *Engine) materialize(ctx context.Context, f *fetcher, ref string, k cache.Kind, d digest.Digest, w *watch) ([]digest.Digest, error) {
	e.Store.Settle(k.Layout())
	var protoData []byte
	if k != cache.KindBst1Artifact {
		got := newStored(true)
		miss, err := f.fetch(ctx, []digest.Digest{d}, w, got)
		if err != nil || len(miss) > 0 {
			return miss, err
		}
		// Read back only when another ref stored it, or it was here.
		var ok bool
		if protoData, ok = got.data[d]; !ok {
			if protoData, err = e.Store.ReadBlob(d); err != nil {
				return nil, err
			}
		}
	}
	en, err := entryFor(k, d, protoData)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	tops := map[digest.Digest][]byte{}
	missing, err := f.closure(ctx, e.wanted(en), w, tops)
	if err != nil || len(missing) > 0 {
		return missing, err
	}
	if w.evidence {
		if missing, err = e.confirm(ctx, f.caches, w.held); err != nil || len(missing) > 0 {
			return missing, err
		}
	}
	en.read = tops
	// Its bytes are all here: another ref may move its own while this
	// one's refs wait to share a sync.
	downloaded := w.slot.moved()
	w.slot.release()
	return nil, e.writeRefs(ctx, f, ref, en, downloaded)
}

// writeRefs writes the local ref for en and the artifact's other refs (its
// weak key's, or its strong key's when ref is the weak one), as BuildStream
// stores an artifact under both: non-strict builds look it up by the weak
// key. When nothing was downloaded for it, a ref that already names the
// same content is left as it is: a run that moves nothing writes nothing,
// and costs no sync of the store. When something was, every ref is
// written without reading it first (the write and its sync happen anyway,
// and a ref written costs fewer system calls than one read). The refs to
// write are written together, after one sync, which artifacts finishing
// close together share (f.commits).
func (e *Engine) writeRefs(ctx context.Context, f *fetcher, ref string, en entry, downloaded bool) error {
	var write []string
	for _, r := range e.allRefs(ctx, ref, en) {
		if downloaded {
			write = append(write, r)
			continue
		}
		if cur, err := e.Store.GetRef(en.kind, r); err == nil && bytes.Equal(cur, en.content) {
			continue
		}
		write = append(write, r)
	}
	return f.commits.write(cache.RefWrite{Kind: en.kind, Refs: write, Data: en.content})
}

func failed(res Result, err error) Result {
	res.Status, res.Reason = StatusFailed, err.Error()
	if errors.Is(err, context.Canceled) {
		res.Status, res.Reason = StatusInterrupted, "the run was interrupted"
	}
	return res
}

// Summary counts results by status.
func Summary(results []Result) map[Status]int {
	out := map[Status]int{}
	for _, r := range results {
		out[r.Status]++
	}
	return out
}

// incompleteOn says that cache c names d but lacks blobs of its closure.
func incompleteOn(c *Cache, d digest.Digest, missing []digest.Digest) string {
	return fmt.Sprintf("%s names %s but %s in no storage cache (e.g. %s)", c.Name(), d, words.IsAre(len(missing), "blob"), missing[0])
}
