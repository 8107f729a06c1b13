package transfer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"google.golang.org/grpc/codes"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/remotes"
)

// answers records how the index caches answered for one ref, so that a
// ref is called missing only when every cache that could hold it said it
// does not.
type answers struct {
	notFound []string // caches that answered: not here
	unasked  []string // caches that could not be asked, each with why
	// hint is set when a cache holds the ref in the other format.
	hint string
}

// complete says whether every index cache answered.
func (a *answers) complete() bool { return len(a.unasked) == 0 }

// reason says what was not found where and which caches could not be
// asked.
func (a *answers) reason() string {
	var parts []string
	if len(a.notFound) > 0 {
		parts = append(parts, "not in "+strings.Join(a.notFound, ", "))
	}
	if len(a.unasked) > 0 {
		parts = append(parts, "could not ask "+strings.Join(a.unasked, "; "))
	}
	if len(parts) == 0 {
		parts = append(parts, "no cache has an index for these refs (type \"index\" or \"all\")")
	}
	if a.hint != "" {
		parts = append(parts, a.hint)
	}
	return strings.Join(parts, "; ")
}

// missingOrFailed ends a ref no index cache resolved: missing when every
// cache answered, failed when one could not be asked.
func (a *answers) missingOrFailed(res Result) Result {
	res.Reason = a.reason()
	res.Status = StatusMissing
	if !a.complete() || len(a.notFound) == 0 {
		res.Status = StatusFailed
	}
	return res
}

// resolve asks the index caches for ref in priority order and calls hit
// for each digest one names (each digest once) until hit returns true.
// With no format set (cache.KindArtifact) each cache is asked for both
// artifact formats in one round, and hit gets the kind the cache holds it
// as. A cache that cannot be asked is recorded in the answers, warned about
// once and, when fatal, skipped for a while (Cache.connect). With Strict the
// first such error is returned.
func (e *Engine) resolve(ctx context.Context, ref string, hit func(c *Cache, k cache.Kind, d digest.Digest) (stop bool, err error)) (*answers, error) {
	a := &answers{}
	seen := map[digest.Digest]bool{}
	for _, c := range filter(e.Caches, hasIndex) {
		r, err := c.connect(ctx, e.Events)
		if err != nil {
			if e.Strict {
				return a, err
			}
			e.Events.info(fmt.Sprintf("%s: cache %s: not asked: skipped for now", ref, c.Name()))
			a.unasked = append(a.unasked, c.describe(err))
			continue
		}
		hits, err := e.answer(ctx, c, ref, lookupAll(ctx, e.Kind, r, c.caps, ref), a)
		if err != nil {
			return a, err
		}
		for _, h := range hits {
			if seen[h.digest] {
				continue
			}
			seen[h.digest] = true
			stop, err := hit(c, h.kind, h.digest)
			if err != nil || stop {
				return a, err
			}
		}
	}
	if len(a.notFound) > 0 && a.hint == "" && a.complete() {
		a.hint = e.otherFormatHint(ctx, ref)
	}
	return a, nil
}

// answer reads one cache's answers for a ref (one per kind asked): the
// hits, and in a the miss or why the cache could not be asked. A miss in
// one kind and an error in another leave the ref unasked on that cache.
func (e *Engine) answer(ctx context.Context, c *Cache, ref string, fs []found, a *answers) (hits []found, err error) {
	var missed, noIndex int
	var failure error
	for _, f := range fs {
		switch err := f.err; {
		case err == nil:
			e.Events.info(fmt.Sprintf("%s: cache %s: names %s (%s)", ref, c.Name(), f.digest, f.kind))
			hits = append(hits, f)
		case errors.Is(err, remotes.ErrNotFound):
			missed++
		case errors.Is(err, errNoIndex):
			noIndex++
		case assetRefusal(err):
			// Buildbarn's bb_remote_asset answers a URI it would have to
			// fetch itself with PERMISSION_DENIED (no "error" fetcher)
			// or UNIMPLEMENTED: for us that is a miss.
			e.Events.info(fmt.Sprintf("%s: cache %s: refused the fetch: a miss", ref, c.Name()))
			c.refusedFetch(err, e.Events)
			missed++
		default:
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			failure = err
		}
	}
	switch {
	case failure != nil && len(hits) == 0:
		c.asked(failure)
		e.Events.info(fmt.Sprintf("%s: cache %s: error: %v", ref, c.Name(), failure))
		if e.Strict {
			return nil, failure
		}
		if fatal(failure) {
			c.kill(failure, e.Events)
		} else {
			e.Events.Warn(ref + ": " + c.describe(failure))
		}
		a.unasked = append(a.unasked, c.describe(failure))
	case len(hits) > 0:
		c.answered(true)
	case missed > 0:
		c.answered(false)
		e.Events.info(fmt.Sprintf("%s: cache %s: miss", ref, c.Name()))
		a.notFound = append(a.notFound, c.Name())
	case noIndex > 0:
		e.Events.info(fmt.Sprintf("%s: cache %s: no index for these refs", ref, c.Name()))
		if c.caps.ReferenceStorage && e.Kind == cache.KindBst2Artifact {
			a.hint = fmt.Sprintf("cache %s has only BuildStream 1's index (ReferenceStorage): set format = \"bst1\" or use --format bst1", c.Name())
		}
	}
	return hits, nil
}

// assetRefusal tells a Remote Asset fetch refused for this URI (after the
// probe showed the service) from a failure of the cache.
func assetRefusal(err error) bool {
	var re *remotes.Error
	if !errors.As(err, &re) || !strings.HasPrefix(re.Op, "Fetch") {
		return false
	}
	return re.Code == codes.Unimplemented || re.Code == codes.PermissionDenied
}

// otherFormatHint asks the caches for ref in the other artifact format;
// when one has it there, the hint says how to switch.
func (e *Engine) otherFormatHint(ctx context.Context, ref string) string {
	other, ok := otherFormat(e.Kind)
	if !ok {
		return ""
	}
	for _, c := range filter(e.Caches, hasIndex) {
		r, err := c.connect(ctx, e.Events)
		if err != nil {
			continue
		}
		if _, err := lookup(ctx, other, r, c.caps, ref); err == nil {
			f := other.Format()
			return fmt.Sprintf("cache %s has it as a %s artifact: use --format %s (or format = %q)", c.Name(), f, f, f)
		}
	}
	return ""
}

// survey walks the closure of roots on storage caches without storing
// anything: Directories come from the local store when it has them, else
// from the first storage cache that does. all is every digest of the
// closure; missing those no storage cache has (a Directory no cache has
// hides its subtree). A storage cache that cannot be asked is an error
// only when some blob stays missing. Where a storage cache has GetTree,
// the trees come in one call per root, and a closure every blob of which
// one FindMissingBlobs finds costs no more: two round trips, whatever the
// tree's depth (a no-op copy or sync asks this of every ref).
func (e *Engine) survey(ctx context.Context, storage []*Cache, roots cache.Roots) (all, missing []digest.Digest, err error) {
	if m, ok := ctx.Value(surveysKey{}).(*surveys); ok {
		return m.do(storage, roots, func() ([]digest.Digest, []digest.Digest, error) { return e.walkStorage(ctx, storage, roots) })
	}
	return e.walkStorage(ctx, storage, roots)
}

// surveys remembers, for one run (a context from withSurveys), what
// survey found of each closure on each set of storage caches: the refs
// naming one artifact (its strong and its weak ref) have it surveyed
// once. Each closure is surveyed by its first caller while the others
// wait. It is safe for concurrent use.
type surveys struct {
	mu sync.Mutex
	m  map[string]*surveyed
}

type surveyed struct {
	once         sync.Once
	all, missing []digest.Digest
	err          error
}

type surveysKey struct{}

// withSurveys gives a run's context its own surveys.
func withSurveys(ctx context.Context) context.Context {
	return context.WithValue(ctx, surveysKey{}, &surveys{m: map[string]*surveyed{}})
}

// do returns what walk finds of roots on storage, walking it once.
func (s *surveys) do(storage []*Cache, roots cache.Roots, walk func() (all, missing []digest.Digest, err error)) ([]digest.Digest, []digest.Digest, error) {
	var key strings.Builder
	for _, c := range storage {
		key.WriteString(c.Name() + "\x00")
	}
	for _, ds := range [][]digest.Digest{roots.Dirs, roots.Blobs} {
		for _, d := range ds {
			key.WriteString(d.String() + " ")
		}
		key.WriteString("|")
	}
	s.mu.Lock()
	v, ok := s.m[key.String()]
	if !ok {
		v = &surveyed{}
		s.m[key.String()] = v
	}
	s.mu.Unlock()
	v.once.Do(func() { v.all, v.missing, v.err = walk() })
	return slices.Clone(v.all), slices.Clone(v.missing), v.err
}

// walkStorage is survey's walk.
func (e *Engine) walkStorage(ctx context.Context, storage []*Cache, roots cache.Roots) (all, missing []digest.Digest, err error) {
	var down error
	var live, trees []remote
	for _, c := range storage {
		r, err := c.connect(ctx, e.Events)
		if err != nil {
			down = err
			continue
		}
		live = append(live, r)
		if c.caps.GetTree {
			trees = append(trees, r)
		}
	}
	// gone narrows ds to what no live cache holds; the empty blob is
	// always at hand.
	gone := func(ds []digest.Digest) []digest.Digest {
		ds = nonEmpty(ds)
		for _, r := range live {
			if len(ds) == 0 {
				break
			}
			m, err := r.FindMissing(ctx, ds)
			if err != nil {
				down = err
				continue
			}
			ds = m
		}
		return ds
	}
	known := knownTrees(ctx, trees, roots.Dirs)
	if all, ok := walkKnown(roots, known); ok && len(gone(all)) == 0 {
		return all, nil, nil
	}
	t := cache.NewWalk(roots)
	for level := t.Next(); len(level) > 0; level = t.Next() {
		all = append(all, level...)
		miss := gone(level)
		missing = append(missing, miss...)
		absent := setOf(miss)
		for _, d := range level {
			if absent[d] {
				continue
			}
			data, ok := known[d]
			if !ok {
				if data, err = e.readDir(ctx, storage, d); err != nil {
					return nil, nil, err
				}
			}
			if _, err := t.Add(d, data); err != nil {
				return nil, nil, err
			}
		}
	}
	all = append(all, t.Files...)
	miss := gone(t.Files)
	missing = append(missing, miss...)
	if len(missing) > 0 && down != nil {
		return all, missing, down
	}
	return all, missing, nil
}

// knownTrees asks the first of caches (those with GetTree) for the trees
// under roots and returns their Directories by digest, each kept only
// where its bytes hash to it. It gives up at the first tree the cache
// cannot give: what it lacks is read level by level.
func knownTrees(ctx context.Context, caches []remote, roots []digest.Digest) map[digest.Digest][]byte {
	out := map[digest.Digest][]byte{}
	if len(caches) == 0 {
		return out
	}
	for _, root := range roots {
		dirs, err := caches[0].GetTree(ctx, root)
		if err != nil {
			break
		}
		keepDirs(out, dirs)
	}
	return out
}

// walkKnown walks the closure of roots through known Directories alone,
// in survey's order; ok is false when one is not known.
func walkKnown(roots cache.Roots, known map[digest.Digest][]byte) (all []digest.Digest, ok bool) {
	t := cache.NewWalk(roots)
	for level := t.Next(); len(level) > 0; level = t.Next() {
		all = append(all, level...)
		for _, d := range level {
			data, ok := known[d]
			if !ok && d.Size != 0 {
				return nil, false
			}
			if _, err := t.Add(d, data); err != nil {
				return nil, false
			}
		}
	}
	return append(all, t.Files...), true
}

// readDir reads one Directory from the local store, else from the first
// storage cache that has it, verified.
func (e *Engine) readDir(ctx context.Context, storage []*Cache, d digest.Digest) ([]byte, error) {
	if d.Size == 0 {
		return nil, nil
	}
	if data, err := e.Store.ReadBlob(d); err == nil {
		return data, nil
	}
	return readFirst(ctx, e, storage, d)
}

// confirm returns the digests of ds that no cache in storage holds
// (FindMissingBlobs on each, in turn). A cache that cannot be asked is an
// error when something is still unconfirmed.
func (e *Engine) confirm(ctx context.Context, storage []*Cache, ds []digest.Digest) ([]digest.Digest, error) {
	var down error
	need := nonEmpty(ds)
	for _, c := range storage {
		if len(need) == 0 {
			return nil, nil
		}
		r, err := c.connect(ctx, e.Events)
		if err == nil {
			var m []digest.Digest
			if m, err = r.FindMissing(ctx, need); err == nil {
				need = m
				continue
			}
		}
		down = err
	}
	if len(need) > 0 && down != nil {
		return need, down
	}
	return need, nil
}

// nonEmpty drops the empty blob, which every cache is taken to hold.
func nonEmpty(ds []digest.Digest) []digest.Digest {
	var out []digest.Digest
	for _, d := range ds {
		if d.Size > 0 {
			out = append(out, d)
		}
	}
	return out
}

// sizeOf adds up the sizes of ds.
func sizeOf(ds []digest.Digest) (n int64) {
	for _, d := range ds {
		n += d.Size
	}
	return n
}

// names lists the caches' names.
func names(cs []*Cache) string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name())
	}
	return strings.Join(out, ", ")
}
