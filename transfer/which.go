package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/remotes"
)

// Where a ref is, per cache.
const (
	WherePresent    = "present"
	WhereAbsent     = "absent"
	WhereIncomplete = "incomplete"
	WhereError      = "error"
	WhereNoIndex    = "no-index" // a storage-only cache cannot say
)

// CacheState is one cache's answer for one ref.
type CacheState struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Digest  string `json:"digest,omitempty"`
	Missing int    `json:"missing,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Location is where one ref is, cache by cache in priority order.
type Location struct {
	Ref    string       `json:"ref"`
	Caches []CacheState `json:"caches"`
	// Note is set when caches name different digests for the ref.
	Note string `json:"note,omitempty"`
}

// Which asks every cache about every ref. A cache whose index names a ref
// is checked for the whole closure in its own storage when it has storage.
func (e *Engine) Which(ctx context.Context, refs []string) []Location {
	out := make([]Location, len(refs))
	var g errgroup.Group
	g.SetLimit(max(e.Jobs, 1))
	for i, ref := range refs {
		out[i] = Location{Ref: ref, Caches: make([]CacheState, len(e.Caches))}
		for j, c := range e.Caches {
			g.Go(func() error {
				out[i].Caches[j] = e.stateOf(ctx, c, ref)
				return nil
			})
		}
	}
	g.Wait()
	for i := range out {
		digests := map[string][]string{}
		var order []string
		for _, s := range out[i].Caches {
			if s.Digest == "" {
				continue
			}
			if _, ok := digests[s.Digest]; !ok {
				order = append(order, s.Digest)
			}
			digests[s.Digest] = append(digests[s.Digest], s.Name)
		}
		if len(order) > 1 {
			note := "caches name different digests (a non-reproducible build or a stale cache):"
			for _, d := range order {
				note += fmt.Sprintf(" %v has %s;", digests[d], d)
			}
			out[i].Note = note[:len(note)-1]
		}
	}
	return out
}

func (e *Engine) stateOf(ctx context.Context, c *Cache, ref string) CacheState {
	st := CacheState{Name: c.Name()}
	if !c.Config.Type.HasIndex() {
		st.Status = WhereNoIndex
		return st
	}
	errState := func(err error) CacheState {
		st.Status, st.Error = WhereError, err.Error()
		return st
	}
	r, err := c.connect(ctx, Events{})
	if err != nil {
		return errState(err)
	}
	d, err := e.Kind.lookup(ctx, r, c.caps, ref)
	switch {
	case errors.Is(err, remotes.ErrNotFound):
		st.Status = WhereAbsent
		return st
	case err != nil:
		return errState(err)
	}
	st.Digest = d.String()
	st.Status = WherePresent
	if !c.Config.Type.HasStorage() {
		return st
	}
	var protoData []byte
	if e.Kind != Bst1Artifact {
		if protoData, err = readSmall(ctx, r, d); errors.Is(err, remotes.ErrNotFound) {
			st.Status, st.Missing = WhereIncomplete, 1
			return st
		} else if err != nil {
			return errState(err)
		}
	}
	en, err := e.Kind.entryFor(d, protoData)
	if err != nil {
		return errState(err)
	}
	n, err := remoteMissing(ctx, r, en.roots)
	if err != nil {
		return errState(err)
	}
	if n > 0 {
		st.Status, st.Missing = WhereIncomplete, n
	}
	return st
}

// readSmall reads one blob into memory, verified.
func readSmall(ctx context.Context, r *remotes.Remote, d digest.Digest) ([]byte, error) {
	if d.Size <= r.MaxBatchBytes()-256 {
		found, missing, err := r.BatchRead(ctx, []digest.Digest{d})
		if err != nil {
			return nil, err
		}
		if len(missing) > 0 {
			return nil, remotes.ErrNotFound
		}
		return found[d], nil
	}
	var buf bytes.Buffer
	if err := r.ReadBlob(ctx, d, &buf); err != nil {
		return nil, err
	}
	if got := digest.NewFromBlob(buf.Bytes()); got != d {
		return nil, fmt.Errorf("blob %s: %w", d, remotes.ErrCorrupt)
	}
	return buf.Bytes(), nil
}

// remoteMissing counts the blobs under roots that a cache lacks, reading
// Directories from the cache itself (nothing is stored locally).
func remoteMissing(ctx context.Context, r *remotes.Remote, roots cache.Roots) (int, error) {
	count := 0
	t := newWalk(roots)
	for level := t.nextLevel(); len(level) > 0; level = t.nextLevel() {
		missing, err := r.FindMissing(ctx, level)
		if err != nil {
			return 0, err
		}
		count += len(missing)
		gone := setOf(missing)
		for _, d := range level {
			if gone[d] {
				continue
			}
			data, err := readSmall(ctx, r, d)
			if err != nil {
				return 0, err
			}
			if err := t.add(d, data); err != nil {
				return 0, err
			}
		}
	}
	// remotes.FindMissing splits large queries; the empty blob counts as
	// always present.
	missing, err := r.FindMissing(ctx, t.files)
	if err != nil {
		return 0, err
	}
	for _, d := range missing {
		if d.Size > 0 {
			count++
		}
	}
	return count, nil
}
