package transfer

import (
	"context"
	"errors"
	"fmt"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
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
		en, err := e.Kind.localEntry(e.Store, ref)
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
		res.Status, res.Reason = StatusRemoved, fmt.Sprintf("with %d refs", len(all))
		if dryRun {
			res.Status = StatusWouldRemove
		} else {
			for _, r := range all {
				if err := e.Store.DeleteRef(e.Kind.StoreKind(), r); err != nil && !errors.Is(err, cache.ErrNotFound) {
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

// RefUsage is what one local ref's closure takes.
type RefUsage struct {
	Ref   string `json:"ref"`
	Bytes int64  `json:"bytes"`
	Blobs int    `json:"blobs"`
	// Missing is how many blobs of the closure the store lacks.
	Missing int    `json:"missing,omitempty"`
	Error   string `json:"error,omitempty"`
}

// StoreUsage sums a store up.
type StoreUsage struct {
	// Bytes and Objects are every object in the store.
	Bytes   int64 `json:"bytes"`
	Objects int   `json:"objects"`
	// UniqueBytes is what the refs asked about reach, each blob once.
	UniqueBytes int64 `json:"unique_bytes"`
}

// Usage measures refs' closures in the local store (optional trees it
// holds included) and the store as a whole.
func (e *Engine) Usage(refs []string) ([]RefUsage, StoreUsage, error) {
	var st StoreUsage
	if err := e.Store.WalkObjects(func(o cache.ObjectInfo) error {
		st.Bytes += o.Digest.Size
		st.Objects++
		return nil
	}); err != nil {
		return nil, st, err
	}
	seen := map[digest.Digest]bool{}
	out := make([]RefUsage, 0, len(refs))
	for _, ref := range refs {
		u := RefUsage{Ref: ref}
		en, err := e.Kind.localEntry(e.Store, ref)
		if err == nil {
			roots := en.roots
			roots.Add(en.optional)
			var all, missing []digest.Digest
			if all, missing, err = e.Store.ClosureOf(roots); err == nil {
				absent := setOf(missing)
				for _, d := range all {
					if absent[d] {
						continue
					}
					u.Bytes += d.Size
					u.Blobs++
					if !seen[d] {
						seen[d] = true
						st.UniqueBytes += d.Size
					}
				}
				u.Missing = len(missing)
			}
		}
		if err != nil {
			u.Error = err.Error()
		}
		out = append(out, u)
	}
	return out, st, nil
}
