package transfer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/remotes"
)

// Status is how a ref ended.
type Status string

// The statuses.
const (
	StatusDone     Status = "done"     // moved
	StatusSkipped  Status = "skipped"  // nothing to move
	StatusMissing  Status = "missing"  // in no cache
	StatusFailed   Status = "failed"   // an error, or incomplete everywhere
	StatusConflict Status = "conflict" // a target names another digest
)

// Result is one ref's outcome.
type Result struct {
	Ref    string `json:"ref"`
	Status Status `json:"status"`
	// Cache served a pull; Target received a push.
	Cache  string `json:"cache,omitempty"`
	Target string `json:"target,omitempty"`
	Digest string `json:"digest,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Engine runs transfers for one invocation.
type Engine struct {
	Store  *cache.Store
	Kind   Kind
	Caches []*Cache
	// Jobs bounds refs and blob transfers in flight.
	Jobs int
	// Strict turns any cache error into a failure.
	Strict bool
	// WithBuildtrees also moves a bst2 artifact's optional trees.
	WithBuildtrees bool
	Events         Events
}

// Stats are the totals of a run.
type Stats struct {
	Blobs        int64   `json:"blobs_transferred"`
	Bytes        int64   `json:"bytes_transferred"`
	BlobsPresent int64   `json:"blobs_present"`
	Seconds      float64 `json:"seconds"`
}

// hasIndex and hasStorage pick caches by configured type.
func hasIndex(c *Cache) bool   { return c.Config.Type.HasIndex() }
func hasStorage(c *Cache) bool { return c.Config.Type.HasStorage() }

func filter(cs []*Cache, keep func(*Cache) bool) []*Cache {
	var out []*Cache
	for _, c := range cs {
		if keep(c) {
			out = append(out, c)
		}
	}
	return out
}

// Pull fetches each ref from the caches into the local store, refs
// concurrently, and reports each result through Events and in the slice
// (in the order of refs).
func (e *Engine) Pull(ctx context.Context, refs []string) ([]Result, Stats) {
	return e.pull(ctx, refs, func(int, Result) {})
}

// pull is Pull calling then with each ref's index and result as soon as
// that ref is done, in the goroutine that pulled it.
func (e *Engine) pull(ctx context.Context, refs []string, then func(int, Result)) ([]Result, Stats) {
	start := time.Now()
	f := newFetcher(e.Store, filter(e.Caches, hasStorage), e.Jobs, e.Strict, e.Events)
	results := make([]Result, len(refs))
	var g errgroup.Group
	g.SetLimit(max(e.Jobs, 1))
	for i, ref := range refs {
		g.Go(func() error {
			results[i] = e.pullOne(ctx, f, ref)
			e.Events.ref(results[i])
			then(i, results[i])
			return nil
		})
	}
	g.Wait()
	return results, Stats{Blobs: f.blobs.Load(), Bytes: f.bytes.Load(), BlobsPresent: f.present.Load(), Seconds: time.Since(start).Seconds()}
}

// complete says whether the local store holds e's whole closure.
func (e *Engine) complete(en entry) (bool, error) {
	roots := en.roots
	if e.WithBuildtrees {
		roots.Add(en.optional)
	}
	_, missing, err := e.Store.ClosureOf(roots)
	return err == nil && len(missing) == 0, err
}

// pullOne walks the index caches for ref and fetches the first hit whose
// closure some storage cache completes. The local ref is written last.
func (e *Engine) pullOne(ctx context.Context, f *fetcher, ref string) Result {
	res := Result{Ref: ref}
	if en, err := e.Kind.localEntry(e.Store, ref); err == nil {
		if ok, _ := e.complete(en); ok {
			res.Status, res.Cache, res.Digest, res.Reason = StatusSkipped, "local", en.digest.String(), "already in the local store"
			return res
		}
	}
	var incomplete []string
	seen := map[digest.Digest]bool{}
	for _, c := range filter(e.Caches, hasIndex) {
		r, err := c.connect(ctx, e.Events)
		if err != nil {
			if e.Strict {
				return failed(res, err)
			}
			continue
		}
		d, err := e.Kind.lookup(ctx, r, c.caps, ref)
		switch {
		case errors.Is(err, remotes.ErrNotFound), errors.Is(err, errNoIndex):
			continue
		case err != nil:
			if ctx.Err() != nil {
				return failed(res, ctx.Err())
			}
			if e.Strict {
				return failed(res, err)
			}
			if fatal(err) {
				c.kill(err, e.Events)
			} else {
				e.Events.Warn(ref + ": " + c.describe(err))
			}
			continue
		}
		if seen[d] {
			continue // a digest already found incomplete
		}
		seen[d] = true
		w := &watch{cache: c}
		missing, err := e.materialize(ctx, f, ref, d, w)
		if err != nil {
			if ctx.Err() != nil {
				return failed(res, ctx.Err())
			}
			return failed(res, err)
		}
		if w.lacks > 0 && hasStorage(c) {
			e.Events.Warn(fmt.Sprintf("%s: cache %s (%s) names it but lacks %d of its blobs", ref, c.Name(), c.Config.URL, w.lacks))
		}
		if len(missing) == 0 {
			res.Status, res.Cache, res.Digest = StatusDone, c.Name(), d.String()
			return res
		}
		reason := fmt.Sprintf("%s names %s but %d blobs are in no storage cache (e.g. %s)", c.Name(), d, len(missing), missing[0])
		e.Events.Warn(fmt.Sprintf("%s: incomplete: %s", ref, reason))
		incomplete = append(incomplete, reason)
	}
	if len(incomplete) > 0 {
		res.Status, res.Reason = StatusFailed, "incomplete everywhere: "+strings.Join(incomplete, "; ")
		return res
	}
	res.Status, res.Reason = StatusMissing, "in no cache"
	return res
}

// materialize fetches what an index hit names and writes the local ref
// once all of it is local. It returns the blobs no cache had.
func (e *Engine) materialize(ctx context.Context, f *fetcher, ref string, d digest.Digest, w *watch) ([]digest.Digest, error) {
	var protoData []byte
	if e.Kind != Bst1Artifact {
		miss, err := f.fetch(ctx, []digest.Digest{d}, w)
		if err != nil || len(miss) > 0 {
			return miss, err
		}
		if protoData, err = e.Store.ReadBlob(d); err != nil {
			return nil, err
		}
	}
	en, err := e.Kind.entryFor(d, protoData)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	roots := en.roots
	if e.WithBuildtrees {
		roots.Add(en.optional)
	}
	missing, err := f.closure(ctx, roots, w)
	if err != nil || len(missing) > 0 {
		return missing, err
	}
	return nil, e.Store.SetRef(e.Kind.StoreKind(), ref, en.content)
}

func failed(res Result, err error) Result {
	res.Status, res.Reason = StatusFailed, err.Error()
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
