package transfer

import (
	"context"
	"fmt"
)

// pullWeak is BuildStream's non-strict pull (Element._pull in bst 1.6)
// after the strict pass: each ref in results that no cache holds and that
// has a weak ref in o.Weak is pulled by its weak ref, which names the
// element's dependencies but not their keys, so an element whose
// dependency changed locally still comes from a cache. A weak ref the
// local store already holds is skipped, as bst does not pull an element
// it has by its weak key. The artifact's strong ref is written beside it
// (writeRefs), as bst links it. The result stands in the strict ref's
// place; a weak ref no cache has either leaves the strict ref missing.
func (e *Engine) pullWeak(ctx context.Context, results []Result, st Stats, o PullOptions) ([]Result, Stats) {
	var at []int
	var weak []string
	for i, r := range results {
		if w := o.Weak[r.Ref]; w != "" && r.Status == StatusMissing {
			at = append(at, i)
			weak = append(weak, w)
		}
	}
	if len(weak) == 0 || ctx.Err() != nil {
		return results, st
	}
	second := *e
	second.Events.OnRef = nil // each ref was reported once, by the strict pass
	o.Weak = nil
	got, wst := second.pull(ctx, weak, o)
	for j, i := range at {
		strict, r := results[i], got[j]
		if r.Status == StatusMissing {
			strict.Reason = fmt.Sprintf("%s; by its weak key %s (non-strict): %s", strict.Reason, r.Ref, r.Reason)
			results[i] = strict
			continue
		}
		reason := fmt.Sprintf("by its weak key (non-strict; strict key %s)", strict.Reason)
		if r.Reason != "" {
			reason += "; " + r.Reason
		}
		r.Reason = reason
		results[i] = r
	}
	st.Add(wst)
	return results, st
}

// whichWeak is which's side of the non-strict pull (pullWeak): each
// location no cache holds complete whose ref has a weak ref in weak is
// noted "by weak key: REF" and followed by the weak ref's location, so
// that what a non-strict pull would fetch shows beside it.
func (e *Engine) whichWeak(ctx context.Context, locs []Location, weak map[string]string) []Location {
	var refs []string
	for _, l := range locs {
		if w := weak[l.Ref]; w != "" && l.Status != Present {
			refs = append(refs, w)
		}
	}
	if len(refs) == 0 || ctx.Err() != nil {
		return locs
	}
	got := e.which(ctx, refs)
	out := make([]Location, 0, len(locs)+len(got))
	for _, l := range locs {
		w := weak[l.Ref]
		if w == "" || l.Status == Present {
			out = append(out, l)
			continue
		}
		by := "by weak key: " + w + " (non-strict)"
		if l.Note != "" {
			by = l.Note + "; " + by
		}
		l.Note = by
		wl := got[0]
		got = got[1:]
		wl.WeakOf = l.Ref
		out = append(out, l, wl)
	}
	return out
}
