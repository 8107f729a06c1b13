package transfer

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
)

// DefaultGrace is how long an object stays after it was written, whatever
// reaches it: a writer that does not take the store's lock (bst itself,
// serve) may still be about to name it in a ref.
const DefaultGrace = time.Hour

// GCOptions tune GC.
type GCOptions struct {
	// MaxSize removes refs, least recently used first, until the objects
	// the remaining refs reach fit (0: no size limit).
	MaxSize int64
	// OlderThan removes refs unused for this long (0: none for age).
	OlderThan time.Duration
	// Grace keeps objects written within it that no ref reached when gc
	// began (DefaultGrace when zero; negative keeps nothing back). Objects
	// that only refs this gc removes reached go at once.
	Grace time.Duration
	// DryRun reports what would go and removes nothing.
	DryRun bool
	// Waiting is called once if gc must wait for transfers in progress.
	Waiting func()
}

// GCReport is what a gc removed (or would).
type GCReport struct {
	Refs    []string `json:"refs_removed"`
	Objects int      `json:"objects_removed"`
	Freed   int64    `json:"bytes_freed"`
	Tmp     int      `json:"tmp_files_removed"`
	// GraceKept and GraceKeptBytes are the objects no ref reached that
	// were kept because they were written within the grace period.
	GraceKept      int   `json:"objects_kept_grace"`
	GraceKeptBytes int64 `json:"bytes_kept_grace"`
	// Left is the bytes of objects left in the store.
	Left int64 `json:"bytes_left"`
}

// GC removes refs (whole artifacts, strong and weak refs together) least
// recently used first until what the rest reach fits MaxSize, and those
// unused for OlderThan; then every object no remaining ref reaches, and
// leftovers in tmp/. It holds the store's lock exclusively, so no
// bst-cache transfer is writing meanwhile, and keeps objects written
// within the grace period that no ref reached when it began, for writers
// that do not take the lock; what the removed refs reached goes at once.
func (e *Engine) GC(ctx context.Context, o GCOptions) (GCReport, error) {
	var rep GCReport
	if !o.DryRun {
		unlock, err := e.Store.Lock(ctx, true, o.Waiting)
		if err != nil {
			return rep, err
		}
		defer unlock()
	}
	grace := o.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	now := time.Now()

	objects := map[digest.Digest]time.Time{}
	var total int64
	if err := e.Store.WalkObjects(func(oi cache.ObjectInfo) error {
		objects[oi.Digest] = oi.Modified
		total += oi.Digest.Size
		return nil
	}); err != nil {
		return rep, err
	}
	arts, needs, err := e.artifacts(ctx)
	if err != nil {
		return rep, err
	}
	reached := int64(0)
	for d, n := range needs {
		if n > 0 {
			reached += d.Size
		}
	}
	// Only objects no ref reached are a lock-free writer's fresh work:
	// the grace period is for them.
	unreached := map[digest.Digest]bool{}
	for d := range objects {
		if needs[d] == 0 {
			unreached[d] = true
		}
	}
	// Refs to remove: unused for OlderThan, then least recently used
	// until what is reached fits.
	sort.Slice(arts, func(i, j int) bool { return arts[i].used.Before(arts[j].used) })
	for _, a := range arts {
		old := o.OlderThan > 0 && now.Sub(a.used) > o.OlderThan
		big := o.MaxSize > 0 && reached > o.MaxSize
		if !old && !big {
			continue
		}
		for _, d := range a.closure {
			if needs[d]--; needs[d] == 0 {
				reached -= d.Size
			}
		}
		rep.Refs = append(rep.Refs, a.refs...)
		if !o.DryRun {
			for _, r := range a.refs {
				if err := e.Store.DeleteRef(a.kind, r); err != nil && !errors.Is(err, cache.ErrNotFound) {
					return rep, err
				}
			}
		}
	}
	empty := digest.NewFromBlob(nil)
	for d, mtime := range objects {
		if needs[d] > 0 || d == empty {
			continue
		}
		if unreached[d] && grace > 0 && now.Sub(mtime) < grace {
			rep.GraceKept++
			rep.GraceKeptBytes += d.Size
			continue
		}
		if !o.DryRun {
			if err := e.Store.RemoveObject(d); err != nil {
				return rep, err
			}
		}
		rep.Objects++
		rep.Freed += d.Size
	}
	rep.Left = total - rep.Freed
	if !o.DryRun {
		rep.Tmp, _ = e.Store.CleanTmp(max(grace, 0))
	}
	return rep, nil
}

// localArtifact is one local artifact (or source): all its refs and what they
// reach.
type localArtifact struct {
	kind    cache.Kind
	refs    []string
	used    time.Time
	closure []digest.Digest
}

// artifacts lists the local artifacts and sources of both BuildStream
// formats, whatever the store's layout (each once, with all its refs), and
// how many of them need each object. A store holding refs gc does not read
// (Remote Asset records of serve) is refused: their objects would look
// unreachable.
func (e *Engine) artifacts(ctx context.Context) ([]localArtifact, map[digest.Digest]int, error) {
	kinds := []cache.Kind{cache.KindBst1Artifact, cache.KindBst2Artifact, cache.KindSource}
	if infos, err := e.Store.ListRefs(cache.KindAsset, ""); err == nil && len(infos) > 0 {
		return nil, nil, fmt.Errorf("the store also holds %d %s refs, which gc does not read: it removes nothing (is it a serve directory?)", len(infos), cache.KindAsset)
	}
	needs := map[digest.Digest]int{}
	var out []localArtifact
	for _, k := range kinds {
		arts, err := e.kindArtifacts(ctx, k, needs)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, arts...)
	}
	return out, needs, nil
}

// kindArtifacts lists the local artifacts of one kind, counting needs.
func (e *Engine) kindArtifacts(ctx context.Context, k cache.Kind, needs map[digest.Digest]int) ([]localArtifact, error) {
	infos, err := e.Store.ListRefs(k, "")
	if err != nil {
		return nil, err
	}
	byName := map[string]cache.RefInfo{}
	for _, i := range infos {
		byName[i.Name] = i
	}
	done := map[string]bool{}
	var out []localArtifact
	for _, info := range infos {
		if done[info.Name] {
			continue
		}
		en, err := localEntry(e.Store, k, info.Name)
		if err != nil {
			return nil, fmt.Errorf("ref %s: %w", info.Name, err)
		}
		a := localArtifact{kind: k}
		for _, r := range e.allRefs(ctx, info.Name, en) {
			if ri, ok := byName[r]; ok && !done[r] {
				done[r] = true
				a.refs = append(a.refs, r)
				a.used = latest(a.used, ri.Accessed, ri.Modified)
			}
		}
		roots := en.roots
		roots.Add(en.optional)
		all, _, err := e.Store.ClosureOf(roots)
		if err != nil {
			return nil, fmt.Errorf("ref %s: %w (bst-cache verify --repair mends it)", info.Name, err)
		}
		a.closure = all
		for _, d := range all {
			needs[d]++
		}
		out = append(out, a)
	}
	return out, nil
}

func latest(ts ...time.Time) time.Time {
	var out time.Time
	for _, t := range ts {
		if t.After(out) {
			out = t
		}
	}
	return out
}
