package transfer

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"regexp"
	"slices"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/spool"
	"github.com/bst-cache/bst-cache/internal/words"
	"github.com/bst-cache/bst-cache/remotes"
)

// Remove deletes refs from the local store, each artifact with all its
// refs (strong and weak) together. Objects stay until a gc. With dryRun
// nothing is deleted and the status says "would". done holds the refs of
// the artifacts removed (or that would be): a ref in it is passed over,
// as another ref of an artifact already removed, and a run that removes
// its refs a batch at a time passes the same done to each call.
func (e *Engine) Remove(ctx context.Context, refs []string, dryRun bool, done spool.Seen) []Result {
	var out []Result
	for _, ref := range refs {
		if done.Has(ref) {
			continue
		}
		res := Result{Ref: ref, Cache: "local"}
		en, err := localEntry(e.Store, e.Kind, ref)
		if errors.Is(err, cache.ErrNotFound) {
			res.Status, res.Reason = StatusMissing, "not in the local store"
			out = append(out, res)
			e.Events.ref(res)
			continue
		}
		if err != nil {
			out = append(out, failed(res, err))
			continue
		}
		res.Digest = en.digest.String()
		all := e.allRefs(ctx, ref, en)
		for _, r := range all {
			done.Add(r)
		}
		res.Status, res.Reason = StatusRemoved, "with "+words.Plural(len(all), "ref")
		if dryRun {
			res.Status = StatusWouldRemove
		} else {
			for _, r := range all {
				if err := e.Store.DeleteRef(en.kind, r); err != nil && !errors.Is(err, cache.ErrNotFound) {
					res = failed(res, err)
					break
				}
			}
		}
		if len(all) > 1 {
			res.Reason += ": " + fmt.Sprint(all[1:])
		}
		out = append(out, res)
		e.Events.ref(res)
	}
	return out
}

// Problem is one object verify found wrong, and the refs it breaks.
type Problem struct {
	Object string   `json:"object"`
	What   string   `json:"problem"` // "corrupt" or "missing"
	Refs   []string `json:"refs,omitempty"`
	// Repaired is set when --repair fetched it again, verified.
	Repaired bool `json:"repaired"`
}

// VerifyReport is what verify checked and found.
type VerifyReport struct {
	Refs     int       `json:"refs"`
	Objects  int       `json:"objects"`
	Bytes    int64     `json:"bytes"`
	Problems []Problem `json:"problems"`
	// Removed are refs --repair removed because no cache could complete
	// them.
	Removed []string `json:"removed"`
}

// Unrepaired counts the problems still there.
func (r VerifyReport) Unrepaired() int {
	n := 0
	for _, p := range r.Problems {
		if !p.Repaired {
			n++
		}
	}
	return n
}

// Verify re-hashes every object refs reach (and, with everything, every
// object in the store) and checks each ref's closure. With repair, corrupt
// objects are removed and each broken ref is pulled again from the caches
// (priority order, every byte checked); a ref no cache can complete is
// removed with all its refs, so none is left naming what is not there.
func (e *Engine) Verify(ctx context.Context, refs []string, everything, repair bool) (VerifyReport, error) {
	ctx = e.Events.bind(ctx)
	rep := VerifyReport{Refs: len(refs), Problems: []Problem{}, Removed: []string{}}
	checked := map[digest.Digest]error{} // nil: good
	breaks := map[digest.Digest][]string{}
	var order []digest.Digest
	check := func(d digest.Digest, ref string) bool {
		err, ok := checked[d]
		if !ok {
			err = e.Store.Verify(d)
			checked[d] = err
			e.Events.plan(d.Size)
			e.Events.bytes(d.Size)
			if err == nil {
				rep.Objects++
				rep.Bytes += d.Size
			}
		}
		if err != nil && d.Size > 0 {
			if len(breaks[d]) == 0 {
				order = append(order, d)
			}
			if ref != "" {
				breaks[d] = append(breaks[d], ref)
			}
			return false
		}
		return true
	}
	broken := map[string]bool{}
	for _, ref := range refs {
		en, err := localEntry(e.Store, e.Kind, ref)
		if err != nil {
			return rep, err
		}
		roots := en.roots
		// An optional tree (a buildtree) is checked when the store has
		// its root: BuildStream pulls it only on request, so its absence
		// breaks nothing.
		for _, d := range en.optional.Dirs {
			if ok, err := e.Store.Has(d); err != nil {
				return rep, fmt.Errorf("%s: %w", ref, err)
			} else if ok {
				roots.Dirs = append(roots.Dirs, d)
			}
		}
		w := cache.NewWalk(roots)
		for level := w.Next(); len(level) > 0; level = w.Next() {
			for _, d := range level {
				if !check(d, ref) {
					broken[ref] = true
					continue
				}
				data, err := e.Store.ReadBlob(d)
				if err == nil {
					_, err = w.Add(d, data)
				}
				if err != nil {
					return rep, fmt.Errorf("%s: %w", ref, err)
				}
			}
		}
		for _, d := range w.Files {
			if !check(d, ref) {
				broken[ref] = true
			}
		}
		e.Events.ref(Result{Ref: ref})
	}
	if everything {
		hashes := make(map[string]bool, len(checked))
		for d := range checked {
			hashes[d.Hash] = true
		}
		if err := e.Store.WalkObjects(func(o cache.ObjectInfo) error {
			// An object a ref reaches was checked under the ref's digest
			// (a truncated one shows here under its size on disk).
			if !hashes[o.Digest.Hash] {
				check(o.Digest, "")
			}
			return nil
		}); err != nil {
			return rep, err
		}
	}
	for _, d := range order {
		what := "corrupt"
		if errors.Is(checked[d], cache.ErrNotFound) {
			what = "missing"
		}
		rep.Problems = append(rep.Problems, Problem{Object: d.String(), What: what, Refs: breaks[d]})
	}
	if repair {
		e.repair(ctx, &rep, order, broken)
	}
	return rep, nil
}

// repair removes corrupt objects, pulls the broken refs again and removes
// those no cache completes.
func (e *Engine) repair(ctx context.Context, rep *VerifyReport, bad []digest.Digest, broken map[string]bool) {
	for _, d := range bad {
		if err := e.Store.RemoveObject(d); err != nil {
			e.Events.Warn(fmt.Sprintf("removing corrupt object %s: %v", d, err))
		}
	}
	var refs []string
	for ref := range broken {
		refs = append(refs, ref)
	}
	results, _ := e.Pull(ctx, refs, PullOptions{})
	for _, r := range results {
		if r.Status == StatusDone || r.Status == StatusSkipped {
			continue
		}
		e.Events.Warn(fmt.Sprintf("%s cannot be repaired (%s): removed", r.Ref, r.Reason))
		for _, rr := range e.Remove(ctx, []string{r.Ref}, false, spool.Seen{}) {
			rep.Removed = append(rep.Removed, rr.Ref)
		}
	}
	for i, p := range rep.Problems {
		d, _ := digest.NewFromString(p.Object)
		err := e.Store.Verify(d)
		rep.Problems[i].Repaired = err == nil || len(p.Refs) == 0 && errors.Is(err, cache.ErrNotFound)
	}
}

// lister is a cache that can say what it holds (bst-cache serve).
type lister interface {
	WalkRefs(ctx context.Context, kinds []string, prefix string, fn func(remotes.ListedRef) error) error
}

// Match hands fn, in name order and each once, the refs a glob matches
// ('*' also matches '/') in the local store and in the index caches that
// can list (bst-cache serve), as the walks and listings bring them: none
// is held. Caches that cannot list are passed over. An error fn returns
// ends the walk.
func (e *Engine) Match(ctx context.Context, glob string, fn func(string) error) error {
	ctx = e.Events.bind(ctx)
	local, err := e.Store.MatchRefs(e.Kind, glob)
	if err != nil {
		return err
	}
	walks := []iter.Seq2[string, error]{func(yield func(string, error) bool) {
		for local.Next() {
			if !yield(local.Name(), nil) {
				return
			}
		}
		if err := local.Err(); err != nil {
			yield("", err)
		}
	}}
	for _, c := range filter(e.Caches, hasIndex) {
		r, err := c.connect(ctx, e.Events)
		if err != nil {
			continue
		}
		walks = append(walks, e.listing(ctx, r, glob, true))
	}
	return merge(walks, fn)
}

// List hands fn, in name order and each once, the refs of the engine's
// kind that cache c holds through its listing service (bst-cache serve),
// as its pages come: those a glob matches ('*' also matches '/'), or all
// of them when glob is "". A cache that cannot list (no listing service,
// or no index) is an error wrapping remotes.ErrCannotList; one that cannot
// be reached, an error of its own. An error fn returns ends the listing.
func (e *Engine) List(ctx context.Context, c *Cache, glob string, fn func(string) error) error {
	ctx = e.Events.bind(ctx)
	if !hasIndex(c) {
		return fmt.Errorf("cache %s has no index: %w", c.Name(), remotes.ErrCannotList)
	}
	r, err := c.connect(ctx, e.Events)
	if err != nil {
		return err
	}
	return merge([]iter.Seq2[string, error]{e.listing(ctx, r, glob, false)}, fn)
}

// errStopped ends a listing its reader has stopped taking.
var errStopped = errors.New("listing no longer read")

// listing is a connected cache's listing of the refs a glob matches ("":
// all), in every kind of the engine's, in name order (a name held in two
// kinds comes twice), ending in its error if any; with quiet, a cache that
// cannot list ends it without one. The listing is asked for the glob's
// literal leading directories only.
func (e *Engine) listing(ctx context.Context, r remote, glob string, quiet bool) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		l, ok := r.(lister)
		if !ok {
			if !quiet {
				yield("", remotes.ErrCannotList)
			}
			return
		}
		prefix, re := "", (*regexp.Regexp)(nil)
		if glob != "" {
			var err error
			if re, err = cache.CompileGlob(glob); err != nil {
				yield("", err)
				return
			}
			prefix = cache.GlobDir(glob)
		}
		var kinds []string
		for _, k := range e.Kind.Kinds() {
			kinds = append(kinds, string(k))
		}
		err := l.WalkRefs(ctx, kinds, prefix, func(ref remotes.ListedRef) error {
			if re != nil && !re.MatchString(ref.Name) || yield(ref.Name, nil) {
				return nil
			}
			return errStopped
		})
		if err != nil && !errors.Is(err, errStopped) && !(quiet && errors.Is(err, remotes.ErrCannotList)) {
			yield("", err)
		}
	}
}

// merge hands fn the names walks bring, each walk in name order, merged
// in name order with each name once; the first error a walk brings, or fn
// returns, ends it.
func merge(walks []iter.Seq2[string, error], fn func(string) error) error {
	type head struct {
		next func() (string, error, bool)
		name string
	}
	var heads []*head
	for _, w := range walks {
		next, stop := iter.Pull2(w)
		defer stop()
		heads = append(heads, &head{next: next})
	}
	// advance moves h to its next name; false at its end.
	advance := func(h *head) (bool, error) {
		name, err, ok := h.next()
		if ok && err != nil {
			return false, err
		}
		h.name = name
		return ok, nil
	}
	live := heads[:0]
	for _, h := range heads {
		ok, err := advance(h)
		if err != nil {
			return err
		}
		if ok {
			live = append(live, h)
		}
	}
	last, named := "", false
	for len(live) > 0 {
		first := 0
		for i, h := range live {
			if h.name < live[first].name {
				first = i
			}
		}
		h := live[first]
		if !named || h.name != last {
			if err := fn(h.name); err != nil {
				return err
			}
			last, named = h.name, true
		}
		ok, err := advance(h)
		if err != nil {
			return err
		}
		if !ok {
			live = slices.Delete(live, first, first+1)
		}
	}
	return nil
}
