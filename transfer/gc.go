package transfer

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
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
	"github.com/bst-cache/bst-cache/internal/spool"
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
	// Removed is told of each ref removed (or that would be), in order;
	// its error stops gc.
	Removed func(ref string) error
}

// GCReport is what a gc removed (or would).
type GCReport struct {
	// Refs is how many refs were removed; GCOptions.Removed is told of
	// each.
	Refs    int   `json:"-"`
	Objects int   `json:"objects_removed"`
	Freed   int64 `json:"bytes_freed"`
	Tmp     int   `json:"tmp_files_removed"`
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
//
// What it holds is bounded whatever the store's size, as for Usage: the
// objects are taken in passes of about objectsPerPass, each over a range
// of first bytes of their hashes. The trees are read once, in the first:
// what they reach beyond its range waits for its pass in unnamed
// temporary files (45 bytes a digest an artifact reaches). An artifact
// takes 24 bytes, and a ref 9 while the artifacts are found. Its refs'
// names, and until the end the objects a removal may take (45 bytes
// each), wait in unnamed temporary files too.
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
	g := &gcRun{e: e, o: o, grace: o.Grace, now: time.Now(), lt: newLocalTrees(e.Store),
		refs: spool.New(64 << 10), found: spool.New(64 << 10), gone: spool.New(64 << 10), later: newLater()}
	defer g.refs.Close()
	defer g.found.Close()
	defer g.gone.Close()
	defer g.later.Close()
	if g.grace == 0 {
		g.grace = DefaultGrace
	}
	if infos, err := e.Store.ListRefs(cache.KindAsset, ""); err == nil && len(infos) > 0 {
		return rep, fmt.Errorf("the store also holds %d %s refs, which gc does not read: it removes nothing (is it a serve directory?)", len(infos), cache.KindAsset)
	}
	total := int64(0)
	for from := 0; from < 256; {
		t, size, err := e.objectTable(from, objectsPerPass, g.fresh)
		if err != nil {
			return rep, err
		}
		total += size
		// The first pass finds the artifacts and ranks them; the others
		// take what it met in their range.
		if from == 0 {
			if err = g.findArtifacts(ctx, t); err == nil {
				err = g.rank(t)
			}
		} else {
			err = g.later.each(t.lo, t.hi, func(k cache.DigestKey, a int32, _ byte) error {
				t.markRank(t.number(k), g.ranks[a])
				return nil
			})
		}
		if err != nil {
			return rep, err
		}
		if err := g.tally(t, &rep); err != nil {
			return rep, err
		}
		from = t.hi
	}
	evicted, err := g.removeRefs(&rep)
	if err != nil {
		return rep, err
	}
	if err := g.gone.Each(func(_ int, rec string) error {
		key, size, rank := readGCObject(rec)
		if rank >= evicted {
			return nil
		}
		if !o.DryRun {
			if err := e.Store.RemoveObject(keyDigest(key)); err != nil {
				return err
			}
		}
		rep.Objects++
		rep.Freed += size
		return nil
	}); err != nil {
		return rep, err
	}
	rep.Left = total - rep.Freed
	if !o.DryRun {
		rep.Tmp, _ = e.Store.CleanTmp(max(g.grace, 0))
	}
	return rep, nil
}

// gcRun is what a gc keeps between its passes. Artifacts are numbered as
// found (kind by kind, their refs in name order), and ranked by when they
// were last used: they are evicted in the order of their ranks, a prefix
// of them. An object is freed exactly when every artifact that needs it
// is evicted: when the highest ranked of them is.
type gcRun struct {
	e     *Engine
	o     GCOptions
	grace time.Duration
	now   time.Time
	lt    *localTrees
	// refs are each artifact's refs, the one read first, joined by NUL (no
	// ref name holds one: they are file names).
	refs *spool.Strings
	// used is when each artifact was last used (Unix ns); order are the
	// artifacts by rank, and ranks their ranks.
	used  []int64
	order []int32
	ranks []int32
	// found are, by artifact, the table numbers of the first pass that it
	// needs, until it is ranked (4 bytes each, in a temporary file).
	found *spool.Strings
	// kinds are the kinds found; ends[i] is the number after the last
	// artifact of kinds[i].
	kinds []cache.Kind
	ends  []int
	// freed is, by rank, the bytes of what the artifact is the highest
	// ranked to need; reached is what every artifact reaches, each digest
	// once (missing ones too: what the refs reach counts toward MaxSize as
	// a whole).
	freed   []int64
	reached int64
	// gone are the objects an eviction may remove, as gcObject records:
	// those no ref reached and out of grace (rank -1), and those the
	// artifacts reach whose highest ranked one may be evicted.
	gone *spool.Strings
	// later are the digests beyond the first pass's range, each with an
	// artifact that needs it.
	later *later
}

// fresh says whether an object written at modified is within the grace
// period.
func (g *gcRun) fresh(modified time.Time) bool {
	return g.grace > 0 && g.now.Sub(modified) < g.grace
}

// old says whether the artifact of rank r was unused for OlderThan.
func (g *gcRun) old(r int32) bool {
	return g.o.OlderThan > 0 && g.now.Sub(time.Unix(0, g.used[g.order[r]])) > g.o.OlderThan
}

// kindOf is artifact a's kind.
func (g *gcRun) kindOf(a int) cache.Kind {
	i, _ := slices.BinarySearch(g.ends, a+1)
	return g.kinds[i]
}

// findArtifacts lists the local artifacts and sources of both BuildStream
// formats, whatever the store's layout (each once, with all its refs),
// and marks in t what they need.
func (g *gcRun) findArtifacts(ctx context.Context, t *digestTable) error {
	for _, k := range []cache.Kind{cache.KindBst1Artifact, cache.KindBst2Artifact, cache.KindSource} {
		if err := g.findKind(ctx, k, t); err != nil {
			return err
		}
		g.kinds = append(g.kinds, k)
		g.ends = append(g.ends, len(g.used))
	}
	return nil
}

// findKind finds the artifacts of one kind, marking in t what they need.
// The refs are read refBatch at a time, and the Directories under each
// batch's artifacts together (each once across all of them). Each ref
// waits in a temporary file, as when it was last used (8 bytes) and its
// name; what finds one by name is 9 bytes a ref (a 32-bit hash, checked
// against the name, its place, and whether it is done).
func (g *gcRun) findKind(ctx context.Context, k cache.Kind, t *digestTable) error {
	listed := spool.New(64 << 10)
	defer listed.Close()
	var index []uint64
	seed := maphash.MakeSeed()
	hash := func(name string) uint64 { return maphash.String(seed, name) >> 32 }
	if err := g.e.Store.WalkRefs(k, "", func(r cache.RefInfo) error {
		index = append(index, hash(r.Name)<<32|uint64(len(index)))
		used := binary.LittleEndian.AppendUint64(nil, uint64(latest(r.Accessed, r.Modified).UnixNano()))
		return listed.Add(string(append(used, r.Name...)))
	}); err != nil {
		return err
	}
	slices.Sort(index)
	done := make([]bool, len(index))
	// window are the batch's refs, as listed, from place first.
	var window []string
	first := 0
	var needs []byte
	// find is the place of the ref named name, and when it was last used.
	find := func(name string) (int, int64, bool, error) {
		h := hash(name)
		at, _ := slices.BinarySearch(index, h<<32)
		for ; at < len(index) && index[at]>>32 == h; at++ {
			i := int(uint32(index[at]))
			s, err := "", error(nil)
			if i >= first && i < first+len(window) {
				s = window[i-first]
			} else if s, err = listed.At(i); err != nil {
				return 0, 0, false, err
			}
			if s[8:] == name {
				return i, int64(binary.LittleEndian.Uint64([]byte(s[:8]))), true, nil
			}
		}
		return 0, 0, false, nil
	}
	// batch reads the window's refs not done yet (those an earlier one
	// turns out to name are passed over, as they would be one by one):
	// each the first of an artifact.
	batch := func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		var refs []string
		var at []int
		for j, ref := range window {
			if !done[first+j] {
				refs = append(refs, ref[8:])
				at = append(at, first+j)
			}
		}
		b, err := g.read(ctx, k, refs)
		if err != nil {
			return err
		}
		for j, n := range at {
			if done[n] {
				continue
			}
			if b.errs[j] != nil {
				return b.errs[j]
			}
			var group []string
			last := int64(math.MinInt64)
			for _, r := range refsOf(refs[j], b.keys[b.ens[j].digest]) {
				i, used, ok, err := find(r)
				if err != nil {
					return err
				}
				if ok && !done[i] {
					done[i] = true
					group = append(group, r)
					last = max(last, used)
				}
			}
			g.used = append(g.used, last)
			if err := g.refs.Add(strings.Join(group, "\x00")); err != nil {
				return err
			}
			needs = needs[:0]
			if err := g.reach(t, b.roots[j], refs[j], int32(len(g.used)-1), func(n int32) {
				needs = binary.LittleEndian.AppendUint32(needs, uint32(n))
			}); err != nil {
				return err
			}
			if err := g.found.Add(string(needs)); err != nil {
				return err
			}
		}
		first += len(window)
		window = window[:0]
		return nil
	}
	if err := listed.Each(func(_ int, ref string) error {
		if window = append(window, ref); len(window) < refBatch {
			return nil
		}
		return batch()
	}); err != nil {
		return err
	}
	return batch()
}

// gcBatch is a batch of refs read and the Directories under them loaded:
// each ref's entry and roots, or its error, and the artifacts' keys.
type gcBatch struct {
	ens   []entry
	roots []numRoots
	errs  []error
	keys  map[digest.Digest]buildstream.Keys
}

// read reads refs of kind k, loads the Directories under them and reads
// the artifacts' keys.
func (g *gcRun) read(ctx context.Context, k cache.Kind, refs []string) (gcBatch, error) {
	ens, errs := g.e.localEntries(ctx, k, refs)
	b := gcBatch{ens: ens, roots: make([]numRoots, len(refs)), errs: make([]error, len(refs))}
	g.lt.reset()
	for j, en := range ens {
		if errs[j] != nil {
			b.errs[j] = fmt.Errorf("ref %s: %w", refs[j], errs[j])
		} else if r, err := g.lt.rootsOf(en); err != nil {
			b.errs[j] = fmt.Errorf("ref %s: %w (bst-cache verify --repair mends it)", refs[j], err)
		} else {
			b.roots[j] = r
		}
	}
	found := newKeysFinder(g.lt, k, ens, errs)
	if err := g.lt.load(ctx, b.roots, found.saw); err != nil {
		return b, err
	}
	b.keys = g.e.batchKeys(ctx, ens, errs, found)
	return b, nil
}

// reach calls fn with the number in t of each digest in t's range that
// roots (artifact a's, first read as ref) reach, missing digests too,
// numbered beside the store's objects; the others wait in g.later.
func (g *gcRun) reach(t *digestTable, roots numRoots, ref string, a int32, fn func(n int32)) error {
	var err error
	if cerr := g.lt.closure(roots, func(k cache.DigestKey, _ reach) {
		if t.holds(k) {
			fn(t.number(k))
		} else if err == nil {
			err = g.later.add(k, a, 0)
		}
	}); cerr != nil {
		return fmt.Errorf("ref %s: %w (bst-cache verify --repair mends it)", ref, cerr)
	}
	return err
}

// markRank notes in mark that an artifact of rank r needs digest n.
func (t *digestTable) markRank(n, r int32) {
	t.mark[n] = max(t.mark[n], r+1)
}

// rank orders the artifacts found by when they were last used, as a sort
// of them in the order found would (not a stable one: artifacts last used
// at the same time go in the order it leaves them), and marks in t what
// each needs with its rank.
func (g *gcRun) rank(t *digestTable) error {
	g.order = make([]int32, len(g.used))
	for i := range g.order {
		g.order[i] = int32(i)
	}
	sort.Slice(g.order, func(i, j int) bool { return g.used[g.order[i]] < g.used[g.order[j]] })
	g.ranks = make([]int32, len(g.order))
	for r, a := range g.order {
		g.ranks[a] = int32(r)
	}
	defer g.found.Close()
	return g.found.Each(func(a int, needs string) error {
		for i := 0; i < len(needs); i += 4 {
			t.markRank(int32(binary.LittleEndian.Uint32([]byte(needs[i:]))), g.ranks[a])
		}
		return nil
	})
}

// tally adds up a pass: what each artifact frees, what grace keeps, and
// the objects an eviction may remove.
func (g *gcRun) tally(t *digestTable, rep *GCReport) error {
	if g.freed == nil {
		g.freed = make([]int64, len(g.used))
	}
	empty := cache.KeyOf(digest.NewFromBlob(nil))
	var rec [gcObjectSize]byte
	for b, run := range t.runs {
		for j, key := range run {
			m := t.mark[t.start[b]+int32(j)]
			size := keySize(key)
			if m > 0 {
				g.reached += size
				g.freed[m-1] += size
			}
			switch {
			case key == empty:
			case m == 0 && t.fresh[b][j]:
				// Only objects no ref reached are a lock-free writer's
				// fresh work: the grace period is for them.
				rep.GraceKept++
				rep.GraceKeptBytes += size
			case m == 0 || g.o.MaxSize > 0 || g.old(m-1):
				if err := g.gone.Add(gcObject(rec[:], key, m-1)); err != nil {
					return err
				}
			}
		}
	}
	for i, key := range t.lackKey {
		if m := t.mark[t.count()+i]; m > 0 {
			g.reached += keySize(key)
			g.freed[m-1] += keySize(key)
		}
	}
	return nil
}

// removeRefs evicts artifacts by rank (least recently used first) while
// they are old or what is reached exceeds MaxSize, and removes their refs:
// it says how many ranks were evicted.
func (g *gcRun) removeRefs(rep *GCReport) (int32, error) {
	reached := g.reached
	evicted := int32(0)
	for ; int(evicted) < len(g.order); evicted++ {
		if !g.old(evicted) && (g.o.MaxSize <= 0 || reached <= g.o.MaxSize) {
			break
		}
		reached -= g.freed[evicted]
		a := g.order[evicted]
		group, err := g.refs.At(int(a))
		if err != nil {
			return 0, err
		}
		for _, r := range strings.Split(group, "\x00") {
			if !g.o.DryRun {
				if err := g.e.Store.DeleteRef(g.kindOf(int(a)), r); err != nil && !errors.Is(err, cache.ErrNotFound) {
					return 0, err
				}
			}
			rep.Refs++
			if g.o.Removed != nil {
				if err := g.o.Removed(r); err != nil {
					return 0, err
				}
			}
		}
	}
	return evicted, nil
}

// gcObjectSize is a gcObject record's size: an object's hash, its size,
// and the highest rank of the artifacts that need it (-1: none).
const gcObjectSize = sha256.Size + 8 + 4

func gcObject(rec []byte, k cache.DigestKey, a int32) string {
	copy(rec, k.Hash[:])
	binary.LittleEndian.PutUint64(rec[sha256.Size:], uint64(k.Size))
	binary.LittleEndian.PutUint32(rec[sha256.Size+8:], uint32(a))
	return string(rec)
}

func readGCObject(rec string) (k cache.DigestKey, size int64, a int32) {
	copy(k.Hash[:], rec)
	k.Size = int64(binary.LittleEndian.Uint64([]byte(rec[sha256.Size:])))
	return k, keySize(k), int32(binary.LittleEndian.Uint32([]byte(rec[sha256.Size+8:])))
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
	// fresh is, beside each run, whether each object is within gc's grace
	// period (gc only).
	fresh   [256][]bool
	lacking map[cache.DigestKey]int32
	lackKey []cache.DigestKey
	// mark is what the caller notes of each: whether a ref reached it
	// (du), 1 + the highest ranked artifact that needs it (gc); 0: none.
	mark []int32
}

func compareKeys(a, b cache.DigestKey) int {
	if c := bytes.Compare(a.Hash[:], b.Hash[:]); c != 0 {
		return c
	}
	return cmp.Compare(a.Size, b.Size)
}

// objectsPerPass is about how many objects du and gc hold at a time (45
// bytes each, their runs made to size): a store with more is measured in
// passes, each over the objects of a range of first bytes of their hashes
// (the trees are read in the first only). Half a million kept du and gc
// --dry-run of a million artifacts (2,000,000 refs, 7,000,001 objects) at
// 154 and 144 MB, where a million took them to 185 and 188 MB; at 200,000
// refs (700,001 objects) the two passes it takes cost the time of one, and
// 67 and 69-71 MB against 80-83 and 85-88.
var objectsPerPass = 1 << 19

// objectTable numbers the objects of the local store whose hashes' first
// byte is from or more, whole fan-out directories until it holds at least
// max of them (math.MaxInt: every one), and sums their sizes; with fresh,
// it keeps what fresh says of when each was written.
func (e *Engine) objectTable(from, max int, fresh func(modified time.Time) bool) (t *digestTable, total int64, err error) {
	t = &digestTable{lo: from}
	n := 0
	if t.hi, err = e.Store.WalkObjectsFrom(from, func() bool { return n >= max }, func(fan []cache.ObjectInfo) error {
		// A fan-out directory is one first byte: its run, made to size.
		b := cache.KeyOf(fan[0].Digest).Hash[0]
		t.runs[b] = slices.Grow(t.runs[b], len(fan))
		if fresh != nil {
			t.fresh[b] = slices.Grow(t.fresh[b], len(fan))
		}
		for _, oi := range fan {
			t.runs[b] = append(t.runs[b], cache.KeyOf(oi.Digest))
			if fresh != nil {
				t.fresh[b] = append(t.fresh[b], fresh(oi.Modified))
			}
			total += oi.Digest.Size
		}
		n += len(fan)
		return nil
	}); err != nil {
		return nil, 0, err
	}
	for b, run := range t.runs {
		if fresh == nil {
			slices.SortFunc(run, compareKeys)
		} else {
			// Sorted in place with what fresh said: sorted copies made
			// beside the runs took gc of a million artifacts to 234 MB
			// (188 MB in place, both with a million objects a pass).
			sort.Sort(freshRun{run, t.fresh[b]})
		}
		t.start[b+1] = t.start[b] + int32(len(t.runs[b]))
	}
	t.mark = make([]int32, t.count())
	t.lacking = map[cache.DigestKey]int32{}
	return t, total, nil
}

// freshRun sorts a run of keys and what fresh said of each together.
type freshRun struct {
	keys  []cache.DigestKey
	fresh []bool
}

func (r freshRun) Len() int           { return len(r.keys) }
func (r freshRun) Less(i, j int) bool { return compareKeys(r.keys[i], r.keys[j]) < 0 }
func (r freshRun) Swap(i, j int) {
	r.keys[i], r.keys[j] = r.keys[j], r.keys[i]
	r.fresh[i], r.fresh[j] = r.fresh[j], r.fresh[i]
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

// number is k's number.
func (t *digestTable) number(k cache.DigestKey) int32 {
	if i, ok := t.has(k); ok {
		return i
	}
	if i, ok := t.lacking[k]; ok {
		return i
	}
	i := int32(len(t.mark))
	t.lacking[k] = i
	t.lackKey = append(t.lackKey, k)
	t.mark = append(t.mark, 0)
	return i
}

// key is digest i's key.
func (t *digestTable) key(i int) cache.DigestKey {
	if i < t.count() {
		b := sort.Search(len(t.runs), func(b int) bool { return int(t.start[b+1]) > i })
		return t.runs[b][i-int(t.start[b])]
	}
	return t.lackKey[i-t.count()]
}

// size is digest i's size.
func (t *digestTable) size(i int) int64 { return keySize(t.key(i)) }

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
