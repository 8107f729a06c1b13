package transfer

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/words"
	"github.com/bst-cache/bst-cache/remotes"
)

// Remove deletes refs from the local store, each artifact with all its
// refs (strong and weak) together. Objects stay until a gc. With dryRun
// nothing is deleted and the status says "would".
func (e *Engine) Remove(ctx context.Context, refs []string, dryRun bool) []Result {
	var out []Result
	done := map[string]bool{}
	for _, ref := range refs {
		if done[ref] {
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
			done[r] = true
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
		for _, rr := range e.Remove(ctx, []string{r.Ref}, false) {
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
	ListRefs(ctx context.Context, kind, prefix string) ([]remotes.ListedRef, error)
}

// Match lists the refs a glob matches ('*' also matches '/') in the local
// store and in the index caches that can list (bst-cache serve), each
// once, sorted. Caches that cannot list are passed over.
func (e *Engine) Match(ctx context.Context, glob string) ([]string, error) {
	ctx = e.Events.bind(ctx)
	seen := map[string]bool{}
	for _, k := range e.Kind.Kinds() {
		local, err := e.Store.ListRefs(k, glob)
		if err != nil {
			return nil, err
		}
		for _, r := range local {
			seen[r.Name] = true
		}
	}
	for _, c := range filter(e.Caches, hasIndex) {
		r, err := c.connect(ctx, e.Events)
		if err != nil {
			continue
		}
		refs, err := e.listed(ctx, r, glob)
		if errors.Is(err, remotes.ErrCannotList) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, ref := range refs {
			seen[ref] = true
		}
	}
	out := make([]string, 0, len(seen))
	for r := range seen {
		out = append(out, r)
	}
	sort.Strings(out)
	return out, nil
}

// List lists the refs of the engine's kind that cache c holds through its
// listing service (bst-cache serve), sorted: those a glob matches ('*'
// also matches '/'), or all of them when glob is "". A cache that cannot
// list (no listing service, or no index) is an error wrapping
// remotes.ErrCannotList; one that cannot be reached, an error of its own.
func (e *Engine) List(ctx context.Context, c *Cache, glob string) ([]string, error) {
	ctx = e.Events.bind(ctx)
	if !hasIndex(c) {
		return nil, fmt.Errorf("cache %s has no index: %w", c.Name(), remotes.ErrCannotList)
	}
	r, err := c.connect(ctx, e.Events)
	if err != nil {
		return nil, err
	}
	refs, err := e.listed(ctx, r, glob)
	if err != nil {
		return nil, err
	}
	sort.Strings(refs)
	return slices.Compact(refs), nil
}

// listed asks a connected cache for the refs a glob matches ("": all), in
// every kind of the engine's; the listing is asked for the glob's literal
// leading directories only.
func (e *Engine) listed(ctx context.Context, r remote, glob string) ([]string, error) {
	l, ok := r.(lister)
	if !ok {
		return nil, remotes.ErrCannotList
	}
	prefix, re := "", (*regexp.Regexp)(nil)
	if glob != "" {
		var err error
		if re, err = cache.CompileGlob(glob); err != nil {
			return nil, err
		}
		prefix = cache.GlobDir(glob)
	}
	var out []string
	for _, k := range e.Kind.Kinds() {
		refs, err := l.ListRefs(ctx, string(k), prefix)
		if err != nil {
			return nil, err
		}
		for _, ref := range refs {
			if re == nil || re.MatchString(ref.Name) {
				out = append(out, ref.Name)
			}
		}
	}
	return out, nil
}
