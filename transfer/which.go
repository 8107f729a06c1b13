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
	// Kind is what the cache holds the ref as (bst1-artifact,
	// bst2-artifact or source) when its index names it.
	Kind cache.Kind `json:"kind,omitempty"`
}

// Location is where one ref is, cache by cache in priority order.
type Location struct {
	Ref string `json:"ref"`
	// Element is the BuildStream element the caller named the ref by;
	// the engine leaves it to the caller.
	Element string `json:"element,omitempty"`
	// Status sums it up: present when some cache holds it complete,
	// missing when every cache answered and none does, failed when a
	// cache could not be asked and none holds it complete.
	Status string       `json:"status"`
	Caches []CacheState `json:"caches"`
	// Refs are every ref the artifact is stored under (its strong and
	// weak key), the one asked first, when its metadata could be read.
	Refs []string `json:"refs,omitempty"`
	// Note is set when caches name different digests for the ref, and
	// in non-strict mode on a ref no cache holds complete that has a
	// weak ref.
	Note string `json:"note,omitempty"`
	// WeakOf is, on a weak ref's location (non-strict mode), the strict
	// ref it stands in for.
	WeakOf string `json:"weak_of,omitempty"`
}

// Which asks every cache about every ref. A cache whose index names a ref
// is checked for the whole closure in its own storage when it has storage.
// weak (BuildStream's non-strict mode, as PullOptions.Weak) maps refs to
// their weak refs: the location of a ref no cache holds complete is
// followed by its weak ref's (see whichWeak).
func (e *Engine) Which(ctx context.Context, refs []string, weak map[string]string) []Location {
	ctx = e.Events.bind(ctx)
	return e.whichWeak(ctx, e.which(ctx, refs), weak)
}

func (e *Engine) which(ctx context.Context, refs []string) []Location {
	out := make([]Location, len(refs))
	var g errgroup.Group
	g.SetLimit(e.lookahead()) // which only asks
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
	// Each ref's others are read from its metadata: round trips, asked
	// for as many refs at once as its state was.
	for i := range out {
		out[i].Status = verdict(out[i].Caches)
		g.Go(func() error {
			out[i].Refs = e.refsOf(ctx, out[i])
			return nil
		})
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

// refsOf reads every ref of the artifact a cache holds complete (from its
// metadata, read not stored); nil when there is one or none.
func (e *Engine) refsOf(ctx context.Context, l Location) []string {
	for _, s := range l.Caches {
		if s.Status != WherePresent {
			continue
		}
		d, err := digest.NewFromString(s.Digest)
		if err != nil {
			return nil
		}
		en, err := e.remoteEntry(ctx, s.Kind, d)
		if err != nil {
			return nil
		}
		if refs := e.allRefs(ctx, l.Ref, en); len(refs) > 1 {
			return refs
		}
		return nil
	}
	return nil
}

// The sums of a Location.
const (
	Present = "present"
	Missing = "missing"
	Failed  = "failed"
)

func verdict(states []CacheState) string {
	v := Missing
	for _, s := range states {
		switch s.Status {
		case WherePresent:
			return Present
		case WhereError:
			v = Failed
		}
	}
	return v
}

func (e *Engine) stateOf(ctx context.Context, c *Cache, ref string) CacheState {
	st := CacheState{Name: c.Name()}
	if !hasIndex(c) {
		st.Status = WhereNoIndex
		return st
	}
	errState := func(err error) CacheState {
		st.Status, st.Error = WhereError, err.Error()
		return st
	}
	r, err := c.connect(ctx, e.tableEvents())
	if err != nil {
		return errState(err)
	}
	var hit *found
	var failure error
	absent, noIndex := 0, 0
	for _, f := range lookupAll(ctx, e.Kind, r, c.caps, ref) {
		switch {
		case f.err == nil:
			if hit == nil {
				hit = &f
			}
		case errors.Is(f.err, remotes.ErrNotFound), assetRefusal(f.err):
			absent++
		case errors.Is(f.err, errNoIndex):
			noIndex++
		default:
			failure = f.err
		}
	}
	switch {
	case hit == nil && failure != nil:
		return errState(failure)
	case hit == nil && absent > 0:
		st.Status = WhereAbsent
		return st
	case hit == nil:
		st.Status, st.Error = WhereNoIndex, fmt.Sprintf("no index for %s refs", e.Kind)
		return st
	}
	d := hit.digest
	st.Digest, st.Kind = d.String(), hit.kind
	// An index hit counts only with its closure on the storage its
	// readers use: the cache's own, or the storage caches for an
	// index-only cache.
	storage := []*Cache{c}
	if !hasStorage(c) {
		storage = e.storage()
	}
	var protoData []byte
	if hit.kind != cache.KindBst1Artifact {
		protoData, err = readFirst(ctx, e, storage, d)
		if errors.Is(err, remotes.ErrNotFound) {
			st.Status, st.Missing = WhereIncomplete, 1
			return st
		} else if err != nil {
			return errState(err)
		}
	}
	en, err := entryFor(hit.kind, d, protoData)
	if err != nil {
		return errState(err)
	}
	_, missing, err := e.survey(ctx, storage, en.roots)
	if err != nil {
		return errState(err)
	}
	st.Status = WherePresent
	if len(missing) > 0 {
		st.Status, st.Missing = WhereIncomplete, len(missing)
	}
	return st
}

// tableEvents are which's Events for connecting: a cache found dead is
// not warned about, since which's table shows each cache's error; -v
// lines still come.
func (e *Engine) tableEvents() Events { return Events{OnInfo: e.Events.OnInfo} }

// readFirst reads a small blob from the first of caches that has it.
func readFirst(ctx context.Context, e *Engine, caches []*Cache, d digest.Digest) ([]byte, error) {
	for _, c := range caches {
		r, err := c.connect(ctx, e.Events)
		if err != nil {
			continue
		}
		data, err := readSmall(ctx, r, d)
		if errors.Is(err, remotes.ErrNotFound) {
			continue
		}
		return data, err
	}
	return nil, fmt.Errorf("blob %s: %w", d, remotes.ErrNotFound)
}

// readSmall reads one blob into memory, verified.
func readSmall(ctx context.Context, r remote, d digest.Digest) ([]byte, error) {
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
	if err := r.ReadBlobFrom(ctx, d, 0, &buf); err != nil {
		return nil, err
	}
	if got := digest.NewFromBlob(buf.Bytes()); got != d {
		return nil, fmt.Errorf("blob %s: %w", d, remotes.ErrCorrupt)
	}
	return buf.Bytes(), nil
}
