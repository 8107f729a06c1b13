package transfer

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sync/errgroup"

	"github.com/bst-cache/bst-cache/buildstream"
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
	if _, ok := cache.DetectLayout(e.Store.Root()); !ok {
		// Nothing to remove. Had gc gone on, a transfer making the store
		// meanwhile (its lock is taken by its first write) could see the
		// objects it wrote and has not named yet removed under it.
		return rep, nil
	}
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

	// Every digest gc meets is numbered once (a big store has a million):
	// what it knows of each sits in slices by that number.
	t, total, err := e.objectTable(0, math.MaxInt, true)
	if err != nil {
		return rep, err
	}
	arts, err := e.artifacts(ctx, t)
	if err != nil {
		return rep, err
	}
	reached := int64(0)
	// Only objects no ref reached are a lock-free writer's fresh work:
	// the grace period is for them.
	unreached := make([]bool, len(t.needs))
	for i, n := range t.needs {
		if n > 0 {
			reached += t.size(i)
		} else {
			unreached[i] = true
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
		for _, i := range a.closure {
			if t.needs[i]--; t.needs[i] == 0 {
				reached -= t.size(int(i))
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
	empty := cache.KeyOf(digest.NewFromBlob(nil))
	for i := range t.count() {
		obj := t.object(i)
		if t.needs[i] > 0 || obj.key == empty {
			continue
		}
		size := t.size(i)
		if unreached[i] && grace > 0 && now.Sub(time.Unix(0, obj.modified)) < grace {
			rep.GraceKept++
			rep.GraceKeptBytes += size
			continue
		}
		if !o.DryRun {
			if err := e.Store.RemoveObject(keyDigest(obj.key)); err != nil {
				return rep, err
			}
		}
		rep.Objects++
		rep.Freed += size
	}
	rep.Left = total - rep.Freed
	if !o.DryRun {
		rep.Tmp, _ = e.Store.CleanTmp(max(grace, 0))
	}
	return rep, nil
}

// digestTable numbers the digests gc and du meet: the objects of the
// store whose hashes' first byte is in [lo, hi) (sorted, so that a
// million of them take no map), then those refs need that the store lacks.
type digestTable struct {
	lo, hi int
	// runs are the objects by their hash's first byte, each run sorted
	// (not one slice: appending to it would need it twice over); start
	// is each run's first number, and then how many objects there are.
	runs  [256][]cache.DigestKey
	start [257]int32
	// modified is, beside each run, when its objects were written (Unix
	// ns), for gc only.
	modified [256][]int64
	lacking  map[cache.DigestKey]int32
	lackKey  []cache.DigestKey
	// needs is how many artifacts need each.
	needs []int32
}

// tableObject is an object of the store, written at modified (Unix ns).
type tableObject struct {
	key      cache.DigestKey
	modified int64
}

func compareKeys(a, b cache.DigestKey) int {
	if c := bytes.Compare(a.Hash[:], b.Hash[:]); c != 0 {
		return c
	}
	return cmp.Compare(a.Size, b.Size)
}

// objectsPerPass is about how many objects du holds at a time (44 bytes
// each): a store with more is measured in passes, each over the
// objects of a range of first bytes of their hashes, which reads every
// ref's trees again. A million keeps du under 200 MB whatever the store's
// size, and measures a store of 200,000 refs (700,000 objects) in one pass.
var objectsPerPass = 1 << 20

// objectTable numbers the objects of the local store whose hashes' first
// byte is from or more, whole fan-out directories until it holds at least
// max of them (math.MaxInt: every one), and sums their sizes; with times,
// it keeps when each was written.
func (e *Engine) objectTable(from, max int, times bool) (t *digestTable, total int64, err error) {
	t = &digestTable{lo: from}
	var timed [256][]tableObject
	n := 0
	if t.hi, err = e.Store.WalkObjectsFrom(from, func() bool { return n >= max }, func(oi cache.ObjectInfo) error {
		k := cache.KeyOf(oi.Digest)
		if b := k.Hash[0]; times {
			timed[b] = append(timed[b], tableObject{k, oi.Modified.UnixNano()})
		} else {
			t.runs[b] = append(t.runs[b], k)
		}
		total += oi.Digest.Size
		n++
		return nil
	}); err != nil {
		return nil, 0, err
	}
	for b := range t.runs {
		if times {
			run := timed[b]
			slices.SortFunc(run, func(a, b tableObject) int { return compareKeys(a.key, b.key) })
			t.runs[b], t.modified[b] = make([]cache.DigestKey, len(run)), make([]int64, len(run))
			for i, o := range run {
				t.runs[b][i], t.modified[b][i] = o.key, o.modified
			}
			timed[b] = nil
		} else {
			slices.SortFunc(t.runs[b], compareKeys)
		}
		t.start[b+1] = t.start[b] + int32(len(t.runs[b]))
	}
	t.needs = make([]int32, t.count())
	t.lacking = map[cache.DigestKey]int32{}
	return t, total, nil
}

// holds says whether k's first byte is in the table's range: whether the
// table is the one to say if the store has k.
func (t *digestTable) holds(k cache.DigestKey) bool {
	return int(k.Hash[0]) >= t.lo && int(k.Hash[0]) < t.hi
}

// has says whether the store held k when the table was made.
func (t *digestTable) has(k cache.DigestKey) (int32, bool) {
	i, ok := slices.BinarySearchFunc(t.runs[k.Hash[0]], k, compareKeys)
	return t.start[k.Hash[0]] + int32(i), ok
}

// count is how many objects the store held.
func (t *digestTable) count() int { return int(t.start[len(t.runs)]) }

// object is object i; its time is known if the table was made with times.
func (t *digestTable) object(i int) tableObject {
	b := sort.Search(len(t.runs), func(b int) bool { return int(t.start[b+1]) > i })
	o := tableObject{key: t.runs[b][i-int(t.start[b])]}
	if t.modified[b] != nil {
		o.modified = t.modified[b][i-int(t.start[b])]
	}
	return o
}

// number is k's number.
func (t *digestTable) number(k cache.DigestKey) int32 {
	if i, ok := t.has(k); ok {
		return i
	}
	if i, ok := t.lacking[k]; ok {
		return i
	}
	i := int32(len(t.needs))
	t.lacking[k] = i
	t.lackKey = append(t.lackKey, k)
	t.needs = append(t.needs, 0)
	return i
}

// key is digest i's key.
func (t *digestTable) key(i int) cache.DigestKey {
	if i < t.count() {
		return t.object(i).key
	}
	return t.lackKey[i-t.count()]
}

// size is digest i's size.
func (t *digestTable) size(i int) int64 { return keyDigest(t.key(i)).Size }

// localArtifact is one local artifact (or source): all its refs and what they
// reach (numbers of a digestTable).
type localArtifact struct {
	kind    cache.Kind
	refs    []string
	used    time.Time
	closure []int32
}

// artifacts lists the local artifacts and sources of both BuildStream
// formats, whatever the store's layout (each once, with all its refs), and
// counts in t how many of them need each object. A store holding refs gc
// does not read (Remote Asset records of serve) is refused: their objects
// would look unreachable.
func (e *Engine) artifacts(ctx context.Context, t *digestTable) ([]localArtifact, error) {
	kinds := []cache.Kind{cache.KindBst1Artifact, cache.KindBst2Artifact, cache.KindSource}
	if infos, err := e.Store.ListRefs(cache.KindAsset, ""); err == nil && len(infos) > 0 {
		return nil, fmt.Errorf("the store also holds %d %s refs, which gc does not read: it removes nothing (is it a serve directory?)", len(infos), cache.KindAsset)
	}
	var out []localArtifact
	lt := newLocalTrees(e.Store)
	for _, k := range kinds {
		arts, err := e.kindArtifacts(ctx, k, t, lt)
		if err != nil {
			return nil, err
		}
		out = append(out, arts...)
	}
	return out, nil
}

// kindArtifacts lists the local artifacts of one kind, counting needs.
// The refs are read refBatch at a time, and the Directories under each
// batch's artifacts together (each once across all of them).
func (e *Engine) kindArtifacts(ctx context.Context, k cache.Kind, t *digestTable, lt *localTrees) ([]localArtifact, error) {
	// Each ref's name and when it was last used, in ListRefs' order, and
	// their numbers in name order to find one (not a map: a big store has
	// a million).
	type localRef struct {
		name string
		used time.Time
	}
	var infos []localRef
	if err := e.Store.WalkRefs(k, "", func(r cache.RefInfo) error {
		infos = append(infos, localRef{r.Name, latest(r.Accessed, r.Modified)})
		return nil
	}); err != nil {
		return nil, err
	}
	byName := make([]int32, len(infos))
	for i := range byName {
		byName[i] = int32(i)
	}
	slices.SortFunc(byName, func(a, b int32) int { return strings.Compare(infos[a].name, infos[b].name) })
	find := func(name string) (int, bool) {
		at, ok := slices.BinarySearchFunc(byName, name, func(i int32, name string) int { return strings.Compare(infos[i].name, name) })
		if !ok {
			return 0, false
		}
		return int(byName[at]), true
	}
	done := make([]bool, len(infos))
	var out []localArtifact
	var reached []int32
	for start := 0; start < len(infos); start += refBatch {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// The refs not done when the batch begins; those an earlier one
		// turns out to name are passed over below, as they would be one
		// by one.
		var names []string
		var at []int
		for n := start; n < min(start+refBatch, len(infos)); n++ {
			if !done[n] {
				names = append(names, infos[n].name)
				at = append(at, n)
			}
		}
		ens, errs := e.localEntries(ctx, k, names)
		lt.reset()
		roots := make([]numRoots, len(names))
		rootErrs := make([]error, len(names))
		for j, en := range ens {
			if errs[j] == nil {
				roots[j], rootErrs[j] = lt.rootsOf(en)
			}
		}
		found := newKeysFinder(lt, k, ens, errs)
		if err := lt.load(ctx, roots, found.saw); err != nil {
			return nil, err
		}
		keys := e.batchKeys(ctx, ens, errs, found)
		// In ref order, the artifacts found, up to the first ref that
		// cannot be read.
		type step struct {
			a     localArtifact
			name  string
			roots numRoots
			// err is the ref's (a is then unset) or its roots'.
			err error
		}
		var steps []step
		for j, n := range at {
			if done[n] {
				continue
			}
			s := step{a: localArtifact{kind: k}, name: names[j], err: errs[j]}
			if s.err == nil {
				for _, r := range refsOf(names[j], keys[ens[j].digest]) {
					if i, ok := find(r); ok && !done[i] {
						done[i] = true
						// The listing's string, not a copy of it.
						s.a.refs = append(s.a.refs, infos[i].name)
						s.a.used = latest(s.a.used, infos[i].used)
					}
				}
				if s.roots, s.err = roots[j], rootErrs[j]; s.err != nil {
					s.err = fmt.Errorf("%w (bst-cache verify --repair mends it)", s.err)
				}
			}
			steps = append(steps, s)
			if s.err != nil {
				break
			}
		}
		for _, s := range steps {
			if s.err == nil {
				reached = reached[:0]
				if err := lt.closure(s.roots, func(k cache.DigestKey, _ reach) {
					// Missing digests too: what the refs reach counts
					// toward MaxSize as a whole.
					n := t.number(k)
					reached = append(reached, n)
					t.needs[n]++
				}); err != nil {
					s.err = fmt.Errorf("%w (bst-cache verify --repair mends it)", err)
				}
				s.a.closure = slices.Clone(reached)
			}
			if s.err != nil {
				return nil, fmt.Errorf("ref %s: %w", s.name, s.err)
			}
			out = append(out, s.a)
		}
	}
	return out, nil
}

// keysFinder notes, as a batch's trees are read, where the keys.yaml of
// each BuildStream 1 artifact is (its root's meta/keys.yaml, as metaFile
// finds it): reading the keys then takes one read, not three.
type keysFinder struct {
	lt    *localTrees
	roots map[int32]bool
	// meta are the roots of each meta/ Directory met.
	meta map[int32][]int32
	// keys is each root's keys.yaml.
	keys map[int32]digest.Digest
}

func newKeysFinder(lt *localTrees, k cache.Kind, ens []entry, errs []error) *keysFinder {
	f := &keysFinder{lt: lt, roots: map[int32]bool{}, meta: map[int32][]int32{}, keys: map[int32]digest.Digest{}}
	for i, en := range ens {
		if k == cache.KindBst1Artifact && errs[i] == nil && cache.CheckDigest(en.digest) == nil {
			f.roots[lt.number(en.digest)] = true
		}
	}
	return f
}

// saw is told of each Directory read, a Directory before those under it.
func (f *keysFinder) saw(n int32, dir *repb.Directory) {
	if f.roots[n] {
		if d, ok := childDigest(dir, buildstream.MetaDir); ok {
			m := f.lt.number(d)
			f.meta[m] = append(f.meta[m], n)
		}
	}
	if roots := f.meta[n]; len(roots) > 0 {
		if d, ok := childDigest(dir, buildstream.KeysFile); ok {
			for _, r := range roots {
				f.keys[r] = d
			}
		}
	}
}

// batchKeys reads the keys of a batch's artifacts (those whose entry was
// read), each once, treeReaders at a time: from the keys.yaml found when
// that was read in the local store, as artifactKeys otherwise.
func (e *Engine) batchKeys(ctx context.Context, ens []entry, errs []error, found *keysFinder) map[digest.Digest]buildstream.Keys {
	var ds []digest.Digest
	at := map[digest.Digest]int{}
	for i, en := range ens {
		if _, ok := at[en.digest]; !ok && errs[i] == nil {
			at[en.digest] = i
			ds = append(ds, en.digest)
		}
	}
	keys := make([]buildstream.Keys, len(ds))
	var g errgroup.Group
	g.SetLimit(treeReaders)
	for i, d := range ds {
		file, ok := found.keys[found.lt.number(d)]
		g.Go(func() error {
			if ok {
				if data, err := e.Store.ReadBlob(file); err == nil {
					keys[i], _ = buildstream.ParseKeys(data)
					return nil
				}
			}
			keys[i] = e.artifactKeys(ctx, ens[at[d]])
			return nil
		})
	}
	g.Wait()
	out := make(map[digest.Digest]buildstream.Keys, len(ds))
	for i, d := range ds {
		out[d] = keys[i]
	}
	return out
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
