package transfer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
)

// gcStore fills a BuildStream 1 store, from seed, with artifacts sharing
// files and Directories, most under a strong and a weak ref, some missing
// a file or a Directory, last used at one of a few times (ties), and with
// objects no ref reaches, some written long ago and some just now.
func gcStore(t testing.TB, seed uint64, now time.Time) *cache.Store {
	t.Helper()
	s, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 21))
	long := now.Add(-3 * time.Hour)
	put := func(data []byte, written time.Time) digest.Digest {
		d, err := s.Add(data)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(s.ObjectPath(d), written, written); err != nil {
			t.Fatal(err)
		}
		return d
	}
	blob := func(name string) []byte {
		return fmt.Appendf(nil, "%s %d %s", name, seed, make([]byte, rng.IntN(3000)))
	}
	dir := func(d *repb.Directory) digest.Digest {
		data, _ := proto.Marshal(d)
		return put(data, long)
	}
	var shared []*repb.FileNode
	for i := range 12 {
		shared = append(shared, &repb.FileNode{Name: fmt.Sprintf("s%d", i), Digest: put(blob(fmt.Sprint("shared", i)), long).ToProto()})
	}
	var subdirs []digest.Digest
	for i := range 4 {
		subdirs = append(subdirs, dir(&repb.Directory{Files: shared[i*3 : i*3+3]}))
	}
	put(nil, long) // the empty blob, which gc leaves
	// When refs were last used: a few times, days ago and just now.
	var times []time.Time
	for i := range 5 {
		times = append(times, now.Add(-time.Duration(i*24+1)*time.Hour))
	}
	for i := range 30 + rng.IntN(20) {
		written := long
		if rng.IntN(6) == 0 {
			written = now // a pull just made it
		}
		root := &repb.Directory{}
		for f := range 1 + rng.IntN(4) {
			root.Files = append(root.Files, &repb.FileNode{Name: fmt.Sprint("own", f), Digest: put(blob(fmt.Sprint("own", i, f)), written).ToProto()})
		}
		for _, f := range rng.Perm(len(shared))[:rng.IntN(4)] {
			root.Files = append(root.Files, shared[f])
		}
		if rng.IntN(2) == 0 {
			root.Directories = append(root.Directories, &repb.DirectoryNode{Name: "sub", Digest: subdirs[rng.IntN(len(subdirs))].ToProto()})
		}
		switch rng.IntN(8) {
		case 0: // a file the store lacks
			root.Files = append(root.Files, &repb.FileNode{Name: "lost", Digest: digest.NewFromBlob(blob("lost")).ToProto()})
		case 1: // a Directory the store lacks
			data, _ := proto.Marshal(&repb.Directory{Files: shared[:1]})
			root.Directories = append(root.Directories, &repb.DirectoryNode{Name: "lostdir", Digest: digest.NewFromBlob(data).ToProto()})
		}
		strong, weak := fmt.Sprintf("%064x", rng.Uint64()), fmt.Sprintf("%064x", rng.Uint64())
		if rng.IntN(4) == 0 {
			weak = strong
		}
		keys := put(fmt.Appendf(nil, "strong: %s\nweak: %s\n", strong, weak), written)
		meta := dir(&repb.Directory{Files: []*repb.FileNode{{Name: buildstream.KeysFile, Digest: keys.ToProto()}}})
		root.Directories = append(root.Directories, &repb.DirectoryNode{Name: buildstream.MetaDir, Digest: meta.ToProto()})
		slices.SortFunc(root.Files, func(a, b *repb.FileNode) int { return strings.Compare(a.Name, b.Name) })
		slices.SortFunc(root.Directories, func(a, b *repb.DirectoryNode) int { return strings.Compare(a.Name, b.Name) })
		rootDigest := dir(root)
		names := []string{strong}
		if weak != strong && rng.IntN(5) > 0 {
			names = append(names, weak)
		}
		element := fmt.Sprintf("p/e%02d", rng.IntN(25)) // some elements built twice
		for _, key := range names {
			path := writeRef(t, s, element+"/"+key, rootDigest)
			modified := times[rng.IntN(len(times))]
			accessed := modified
			if rng.IntN(3) == 0 {
				accessed = times[rng.IntN(len(times))]
			}
			if err := os.Chtimes(path, accessed, modified); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range 10 { // reached by no ref
		written := long
		if i%2 == 0 {
			written = now
		}
		put(blob(fmt.Sprint("orphan", i)), written)
	}
	return s
}

// gcReference is what GC should do to s, the straightforward way: every
// artifact and its whole closure (Store.ClosureOf) held at once, evicted
// least recently used first as sort.Slice orders them.
func gcReference(t testing.TB, s *cache.Store, o GCOptions, now time.Time) (refs []string, gone map[digest.Digest]bool, rep GCReport) {
	t.Helper()
	e := &Engine{Store: s, Kind: cache.KindArtifact}
	type artifact struct {
		kind    cache.Kind
		refs    []string
		used    time.Time
		closure []digest.Digest
	}
	var arts []artifact
	needs := map[digest.Digest]int{}
	for _, k := range []cache.Kind{cache.KindBst1Artifact, cache.KindBst2Artifact, cache.KindSource} {
		infos, err := s.ListRefs(k, "")
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]cache.RefInfo{}
		for _, info := range infos {
			byName[info.Name] = info
		}
		done := map[string]bool{}
		for _, info := range infos {
			if done[info.Name] {
				continue
			}
			en, err := localEntry(s, k, info.Name)
			if err != nil {
				t.Fatal(err)
			}
			a := artifact{kind: k}
			for _, r := range refsOf(info.Name, e.artifactKeys(context.Background(), en)) {
				if other, ok := byName[r]; ok && !done[r] {
					done[r] = true
					a.refs = append(a.refs, r)
					a.used = latest(a.used, other.Accessed, other.Modified)
				}
			}
			roots := en.roots
			roots.Add(en.optional)
			if a.closure, _, err = s.ClosureOf(roots); err != nil {
				t.Fatal(err)
			}
			for _, d := range a.closure {
				needs[d]++
			}
			arts = append(arts, a)
		}
	}
	reached := int64(0)
	for d := range needs {
		reached += d.Size
	}
	sort.Slice(arts, func(i, j int) bool { return arts[i].used.Before(arts[j].used) })
	for _, a := range arts {
		if !(o.OlderThan > 0 && now.Sub(a.used) > o.OlderThan) && !(o.MaxSize > 0 && reached > o.MaxSize) {
			continue
		}
		for _, d := range a.closure {
			if needs[d]--; needs[d] == 0 {
				reached -= d.Size
			}
		}
		refs = append(refs, a.refs...)
	}
	rep.Refs = len(refs)
	grace := o.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	gone = map[digest.Digest]bool{}
	if err := s.WalkObjects(func(obj cache.ObjectInfo) error {
		d := obj.Digest
		rep.Left += d.Size
		n, reachedOnce := needs[d]
		switch {
		case n > 0 || d.Size == 0:
		case !reachedOnce && grace > 0 && now.Sub(obj.Modified) < grace:
			rep.GraceKept++
			rep.GraceKeptBytes += d.Size
		default:
			gone[d] = true
			rep.Objects++
			rep.Freed += d.Size
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rep.Left -= rep.Freed
	return refs, gone, rep
}

// GC removes what the straightforward reference says, in its order, on
// random stores (artifacts sharing files and Directories, strong and weak
// refs, ties in last use, missing blobs, fresh objects) under MaxSize,
// OlderThan and grace, in one pass over the objects and in many; a dry
// run says the same and removes nothing.
func TestGCIsTheReference(t *testing.T) {
	options := []struct {
		name string
		o    GCOptions
		// size is MaxSize as a part of what the refs reach (0: none).
		size float64
	}{
		{"nothing to evict", GCOptions{}, 0},
		{"no grace", GCOptions{Grace: -1}, 0},
		{"older than two days", GCOptions{OlderThan: 48 * time.Hour}, 0},
		{"max size, most", GCOptions{}, 0.8},
		{"max size, half, no grace", GCOptions{Grace: -1}, 0.5},
		{"max size, little, and older than a day", GCOptions{OlderThan: 24 * time.Hour, Grace: 30 * time.Minute}, 0.1},
		{"max size 1 byte", GCOptions{MaxSize: 1}, 0},
	}
	for seed := range uint64(3) {
		for _, tc := range options {
			for _, perPass := range []int{objectsPerPass, 7} {
				t.Run(fmt.Sprintf("seed %d/%s/%d a pass", seed, tc.name, perPass), func(t *testing.T) {
					setObjectsPerPass(t, perPass)
					now := time.Now()
					s := gcStore(t, seed, now)
					infos, err := s.ListRefs(cache.KindBst1Artifact, "")
					if err != nil {
						t.Fatal(err)
					}
					// Reading a ref may move its access time: put it back
					// (on those a gc left).
					untouch := func() {
						for _, info := range infos {
							path, _ := s.RefPath(cache.KindBst1Artifact, info.Name)
							if err := os.Chtimes(path, info.Accessed, info.Modified); err != nil && !errors.Is(err, fs.ErrNotExist) {
								t.Fatal(err)
							}
						}
					}
					o := tc.o
					if tc.size > 0 {
						_, _, all := gcReference(t, s, GCOptions{}, now)
						o.MaxSize = int64(tc.size * float64(all.Left))
						untouch()
					}
					wantRefs, gone, want := gcReference(t, s, o, now)
					untouch()
					refsBefore, objectsBefore := refsAndObjects(t, s)
					// A dry run first, then the run.
					for _, dry := range []bool{true, false} {
						var got []string
						o.DryRun = dry
						o.Removed = func(ref string) error {
							got = append(got, ref)
							return nil
						}
						rep, err := (&Engine{Store: s, Kind: cache.KindArtifact}).GC(context.Background(), o)
						untouch()
						if err != nil {
							t.Fatal(err)
						}
						if diff := cmp.Diff(wantRefs, got); diff != "" {
							t.Errorf("dry run %v: refs removed, in order (-reference +GC):\n%s", dry, diff)
						}
						if diff := cmp.Diff(want, rep); diff != "" {
							t.Errorf("dry run %v: report (-reference +GC):\n%s", dry, diff)
						}
					}
					wantRefsAfter, wantObjects := map[string]bool{}, map[digest.Digest]bool{}
					for r := range refsBefore {
						wantRefsAfter[r] = true
					}
					for _, r := range wantRefs {
						delete(wantRefsAfter, r)
					}
					for d := range objectsBefore {
						if !gone[d] {
							wantObjects[d] = true
						}
					}
					refsAfter, objectsAfter := refsAndObjects(t, s)
					if diff := cmp.Diff(wantRefsAfter, refsAfter); diff != "" {
						t.Errorf("refs left (-want +got):\n%s", diff)
					}
					if diff := cmp.Diff(wantObjects, objectsAfter); diff != "" {
						t.Errorf("objects left (-want +got):\n%s", diff)
					}
					if len(wantRefs) > 0 && len(gone) == 0 {
						t.Errorf("refs went and no object: the store was meant to hold some only they reach")
					}
				})
			}
		}
	}
}

// refsAndObjects are the refs and objects in s.
func refsAndObjects(t testing.TB, s *cache.Store) (map[string]bool, map[digest.Digest]bool) {
	t.Helper()
	refs, objects := map[string]bool{}, map[digest.Digest]bool{}
	infos, err := s.ListRefs(cache.KindArtifact, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range infos {
		refs[info.Name] = true
	}
	if err := s.WalkObjects(func(o cache.ObjectInfo) error {
		objects[o.Digest] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return refs, objects
}

// gc of a store holds about 24 bytes an artifact, 9 a ref while it finds
// them (their names wait in temporary files), and a part of the objects at
// a time (objectsPerPass), whatever the store's size: 8,000
// artifacts under a strong and a weak ref (16,000 refs, 24,001 objects),
// 4,000 objects a pass, need less than 3 MiB of heap beyond 64 bytes an
// artifact, every ref evicted (a dry run). Holding every artifact with its
// refs' names and closure, and a table of every object (as gc did), takes
// about twice that.
func TestGCMemoryIsBounded(t *testing.T) {
	const artifacts = 8000
	s := smallArtifacts(t, artifacts)
	setObjectsPerPass(t, 4000)
	e := &Engine{Store: s, Kind: cache.KindArtifact}
	// The temporary files have no names even while gc runs.
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	removed := 0
	var rep GCReport
	peak := peakLive(t, func() {
		var err error
		rep, err = e.GC(context.Background(), GCOptions{MaxSize: 1, DryRun: true, Removed: func(string) error {
			if removed++; removed == 2*artifacts {
				if left, _ := os.ReadDir(tmp); len(left) > 0 {
					t.Errorf("gc left %s in the temporary directory", left[0].Name())
				}
			}
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
	})
	if removed != 2*artifacts || rep.Refs != removed || rep.Objects != 3*artifacts {
		t.Fatalf("gc would remove %d refs (%d told), %d objects; want %d and %d", rep.Refs, removed, rep.Objects, 2*artifacts, 3*artifacts)
	}
	bound := uint64(64*artifacts + 3<<20)
	t.Logf("peak live heap %d bytes (%.0f an artifact), bound %d", peak, float64(peak)/artifacts, bound)
	if peak > bound {
		t.Errorf("gc of %d refs and %d objects held %d bytes at its peak, more than %d", 2*artifacts, rep.Objects+1, peak, bound)
	}
}

// objectTable numbers a range of the store's objects: taken in parts of
// at least 1, 100 and every object, with and without what the grace period
// says of each (every third object written two hours ago, the rest just
// now), the tables meet every object once, in their ranges, each run
// sorted, each object's freshness beside it, and each run made to its
// fan-out directory's size (no room to spare beyond the allocator's: gc
// of a million artifacts held about a sixth more with runs grown by
// append).
func TestObjectTable(t *testing.T) {
	s := smallArtifacts(t, 300)
	e := &Engine{Store: s, Kind: cache.KindArtifact}
	old := map[cache.DigestKey]bool{}
	all := map[cache.DigestKey]bool{}
	var total int64
	if err := s.WalkObjects(func(oi cache.ObjectInfo) error {
		k := cache.KeyOf(oi.Digest)
		all[k] = true
		total += oi.Digest.Size
		if len(all)%3 == 0 {
			old[k] = true
			then := time.Now().Add(-2 * time.Hour)
			return os.Chtimes(s.ObjectPath(oi.Digest), then, then)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	fresh := func(modified time.Time) bool { return time.Since(modified) < time.Hour }
	for _, part := range []int{1, 100, math.MaxInt} {
		for _, withFresh := range []bool{true, false} {
			name := fmt.Sprintf("parts of %d, fresh %v", part, withFresh)
			met := map[cache.DigestKey]bool{}
			var sum int64
			var held, count int
			for from := 0; from < 256; {
				f := fresh
				if !withFresh {
					f = nil
				}
				table, size, err := e.objectTable(from, part, f)
				if err != nil {
					t.Fatal(err)
				}
				sum += size
				count += table.count()
				for b, run := range table.runs {
					held += cap(run)
					if !slices.IsSortedFunc(run, compareKeys) {
						t.Fatalf("%s: run %02x is not sorted", name, b)
					}
					if withFresh && len(table.fresh[b]) != len(run) || !withFresh && table.fresh[b] != nil {
						t.Fatalf("%s: run %02x has %d objects and %d fresh marks", name, b, len(run), len(table.fresh[b]))
					}
					for j, k := range run {
						if b < table.lo || b >= table.hi || met[k] || !all[k] {
							t.Fatalf("%s: %x met again, outside [%d, %d), or not an object", name, k.Hash, table.lo, table.hi)
						}
						met[k] = true
						if withFresh && table.fresh[b][j] == old[k] {
							t.Errorf("%s: %x fresh %v, written two hours ago %v", name, k.Hash, table.fresh[b][j], old[k])
						}
					}
				}
				from = table.hi
			}
			if len(met) != len(all) || sum != total {
				t.Errorf("%s: met %d objects of %d bytes, want %d of %d", name, len(met), sum, len(all), total)
			}
			// The allocator rounds each run up to its size class (an
			// eighth at most) or, past 32 KiB, to a page.
			if bound := count + count/8; held > bound {
				t.Errorf("%s: room for %d objects in the runs, %d held (at most %d)", name, held, count, bound)
			}
		}
	}
}

// smallArtifacts is a store of n artifacts, each under a strong and a weak
// ref: a root Directory holding an empty file and meta/keys.yaml (n*3+1
// objects).
func smallArtifacts(t testing.TB, n int) *cache.Store {
	t.Helper()
	s, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	empty, err := s.Add(nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		strong, weak := fmt.Sprintf("%064x", 2*i), fmt.Sprintf("%064x", 2*i+1)
		keys, err := s.Add(fmt.Appendf(nil, "strong: %s\nweak: %s\n", strong, weak))
		if err != nil {
			t.Fatal(err)
		}
		data, _ := proto.Marshal(&repb.Directory{Files: []*repb.FileNode{{Name: buildstream.KeysFile, Digest: keys.ToProto()}}})
		meta, err := s.Add(data)
		if err != nil {
			t.Fatal(err)
		}
		data, _ = proto.Marshal(&repb.Directory{
			Files:       []*repb.FileNode{{Name: fmt.Sprintf("f%d", i), Digest: empty.ToProto()}},
			Directories: []*repb.DirectoryNode{{Name: buildstream.MetaDir, Digest: meta.ToProto()}},
		})
		root, err := s.Add(data)
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{strong, weak} {
			writeRef(t, s, fmt.Sprintf("p/e%05d/%s", i, key), root)
		}
	}
	return s
}

// gc and du read each ref and Directory once, however many passes they
// take over the objects: 2,000 artifacts (6,001 objects) in passes of 100
// objects (one fan-out directory each, 256 passes) cost about the read
// calls of one pass, not 256 times them as when each pass read every tree
// again.
func TestGCAndDuReadTreesOnce(t *testing.T) {
	s := smallArtifacts(t, 2000)
	e := &Engine{Store: s, Kind: cache.KindArtifact}
	onePass := objectsPerPass
	for _, c := range []struct {
		name string
		run  func() any
	}{
		{"gc --dry-run --max-size 1", func() any {
			rep, err := e.GC(context.Background(), GCOptions{MaxSize: 1, DryRun: true})
			if err != nil {
				t.Fatal(err)
			}
			return rep
		}},
		{"du", func() any {
			u, err := (&Engine{Store: s, Kind: cache.KindBst1Artifact}).UsageAll(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			return []any{usages(t, u), u.Store}
		}},
	} {
		var reads [2]int64
		var got [2]any
		for i, perPass := range []int{onePass, 100} {
			setObjectsPerPass(t, perPass)
			before := readCalls(t)
			got[i] = c.run()
			reads[i] = readCalls(t) - before
		}
		if diff := cmp.Diff(got[0], got[1]); diff != "" {
			t.Errorf("%s: one pass and passes of 100 objects differ (-one +passes):\n%s", c.name, diff)
		}
		t.Logf("%s: %d read calls in one pass, %d in passes of 100 objects", c.name, reads[0], reads[1])
		if reads[1] > 2*reads[0]+1000 {
			t.Errorf("%s: %d read calls in passes of 100 objects, more than twice the %d of one pass", c.name, reads[1], reads[0])
		}
	}
}

// readCalls is how many read calls the process made (Linux's
// /proc/self/io syscr).
func readCalls(t testing.TB) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("counting read calls: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "syscr: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no syscr in /proc/self/io:\n%s", data)
	return 0
}
