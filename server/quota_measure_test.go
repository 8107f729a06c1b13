package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
)

// measureTree is a two-level tree: a root naming a file of its own, a
// file every tree shares, and a subdirectory with a file of its own.
func measureTree(name string) (digest.Digest, map[digest.Digest][]byte) {
	blobs := map[digest.Digest][]byte{}
	file := func(b []byte) *repb.FileNode {
		d := digest.NewFromBlob(b)
		blobs[d] = b
		return &repb.FileNode{Name: fmt.Sprintf("f%d", len(blobs)), Digest: d.ToProto()}
	}
	dir := func(dir *repb.Directory) digest.Digest {
		data, _ := proto.Marshal(dir)
		d := digest.NewFromBlob(data)
		blobs[d] = data
		return d
	}
	sub := dir(&repb.Directory{Files: []*repb.FileNode{file([]byte("sub of " + name))}})
	root := dir(&repb.Directory{
		Files:       []*repb.FileNode{file([]byte("own of " + name)), file([]byte("shared by all"))},
		Directories: []*repb.DirectoryNode{{Name: "sub", Digest: sub.ToProto()}},
	})
	return root, blobs
}

// measureStore is a BuildStream 1 store of n artifacts, each named by
// one to three refs (keys) naming one tree, and a ref that cannot be read.
func measureStore(tb testing.TB, n int) *cache.Store {
	tb.Helper()
	store, err := cache.Open(tb.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		tb.Fatal(err)
	}
	for a := range n {
		root, blobs := measureTree(fmt.Sprint(a))
		for d, b := range blobs {
			if err := store.PutBytes(d, b); err != nil {
				tb.Fatal(err)
			}
		}
		for key := range 1 + a%3 {
			if err := store.SetRef(cache.KindBst1Artifact, measureRef(a, key), buildstream.V1RefContent(root)); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := store.SetRef(cache.KindBst1Artifact, "demo/broken/1", []byte("not a ref")); err != nil {
		tb.Fatal(err)
	}
	return store
}

// measureRef names key k of artifact a; the keys of an artifact are far
// apart in the walk's order, as an element's strong and weak keys are.
func measureRef(a, k int) string { return fmt.Sprintf("demo/k%d/e%05d", k, a) }

// unknownAccount is an account of store whose start-up walk of the
// objects is done, its refs not measured yet.
func unknownAccount(tb testing.TB, store *cache.Store) *quota {
	tb.Helper()
	q := newAccount()
	q.s, q.limit, q.lease, q.readLease = &Server{store: store, logf: func(string, ...any) {}}, 1<<40, time.Minute, time.Minute
	if err := store.WalkObjects(func(o cache.ObjectInfo) error {
		q.object(o)
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
	q.walked <- nil
	return q
}

// accountRef is what the account says of a ref: its closure's hashes,
// the refs in its ring and its last use.
type accountRef struct {
	closure []string
	ring    []string
	used    int64
}

// snapshot is q's refs, and its objects' needs counts by hash. It checks
// that every object's needs count is the refs naming it: nothing half
// applied.
func snapshot(tb testing.TB, q *quota) (map[string]accountRef, map[string]int32) {
	tb.Helper()
	q.mu.Lock()
	defer q.mu.Unlock()
	refs := map[string]accountRef{}
	count := map[uint32]int32{}
	for k, r := range q.refs {
		var a accountRef
		for _, i := range q.recs[r].closure {
			a.closure = append(a.closure, fmt.Sprintf("%x", q.objs[i].hash))
			count[i]++
		}
		slices.Sort(a.closure)
		a.ring = []string{k.ref}
		for s := q.recs[r].sib; s != r; s = q.recs[s].sib {
			a.ring = append(a.ring, q.recs[s].ref)
		}
		slices.Sort(a.ring)
		a.used = q.recs[r].used
		refs[string(k.kind)+":"+k.ref] = a
	}
	needs := map[string]int32{}
	for i, o := range q.objs {
		if o.size < 0 {
			continue
		}
		if o.needs != count[uint32(i)] {
			tb.Errorf("object %x: needs %d, named by %d refs", o.hash, o.needs, count[uint32(i)])
		}
		needs[fmt.Sprintf("%x", o.hash)] = o.needs
	}
	return refs, needs
}

// The account built with many readers is the one built with one, on the
// same store: refs, closures, rings of keys, last uses kept aside, needs
// counts; refs written while it measures keep what was written, and refs
// deleted meanwhile are either left out or accounted whole.
func TestQuotaMeasureManyReadersAsOne(t *testing.T) {
	const n = 600
	store := measureStore(t, n)
	written := func(q *quota) {
		// Written before the walk reaches them: the ref names a new tree.
		for a := 0; a < n; a += 7 {
			root, blobs := measureTree(fmt.Sprint("new", a))
			for d, b := range blobs {
				if err := store.PutBytes(d, b); err != nil {
					t.Fatal(err)
				}
			}
			closure, err := store.Reach(cache.Roots{Dirs: []digest.Digest{root}})
			if err != nil {
				t.Fatal(err)
			}
			q.setRef(cache.KindBst1Artifact, measureRef(a, 0), closure, time.Unix(int64(a), 0))
		}
		// Used before the walk reaches them.
		for a := 1; a < n; a += 5 {
			q.useRef(cache.KindBst1Artifact, measureRef(a, 0), time.Unix(1<<33, int64(a)))
		}
	}
	// Reading a ref moves its access time once (relatime): read them all
	// first, so that each account finds the same times.
	if err := unknownAccount(t, store).measure(1); err != nil {
		t.Fatal(err)
	}
	serial := unknownAccount(t, store)
	written(serial)
	if err := serial.measure(1); err != nil {
		t.Fatal(err)
	}
	wantRefs, wantNeeds := snapshot(t, serial)
	if len(wantRefs) != n*2 {
		t.Fatalf("the serial account holds %d refs, want %d", len(wantRefs), n*2)
	}

	// Artifact 14's first key was written since: its other two keys,
	// naming the same tree, still share one closure and go together.
	if r := wantRefs["bst1-artifact:"+measureRef(14, 1)].ring; !slices.Equal(r, []string{measureRef(14, 1), measureRef(14, 2)}) {
		t.Errorf("the keys of artifact 14 left after one was written: ring %v", r)
	}

	many := unknownAccount(t, store)
	written(many)
	if err := many.measure(16); err != nil {
		t.Fatal(err)
	}
	gotRefs, gotNeeds := snapshot(t, many)
	compareAccounts(t, gotRefs, wantRefs, nil)
	if !mapsEqual(gotNeeds, wantNeeds) {
		t.Errorf("needs counts differ from the serial account's")
	}

	// Refs deleted from the disk while it measures: each is left out or
	// accounted as it was, and the rest as the serial account has them.
	// The refs deleted are in a directory of their own: a walk of a
	// directory changed meanwhile may miss other refs of it.
	for a := 3; a < n; a += 11 {
		root, _ := measureTree(fmt.Sprint(a))
		if err := store.SetRef(cache.KindBst1Artifact, fmt.Sprintf("demo/gone/e%05d", a), buildstream.V1RefContent(root)); err != nil {
			t.Fatal(err)
		}
	}
	if err := unknownAccount(t, store).measure(1); err != nil {
		t.Fatal(err)
	}
	serial = unknownAccount(t, store)
	written(serial)
	if err := serial.measure(1); err != nil {
		t.Fatal(err)
	}
	wantRefs, _ = snapshot(t, serial)
	deleting := unknownAccount(t, store)
	written(deleting)
	deleted := map[string]bool{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for a := 3; a < n; a += 11 {
			name := fmt.Sprintf("demo/gone/e%05d", a)
			if err := store.DeleteRef(cache.KindBst1Artifact, name); err != nil {
				t.Error(err)
			}
			deleted[string(cache.KindBst1Artifact)+":"+name] = true
		}
	}()
	err := deleting.measure(16)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	gotRefs, _ = snapshot(t, deleting)
	compareAccounts(t, gotRefs, wantRefs, deleted)
	kept := 0
	for k := range deleted {
		if _, ok := gotRefs[k]; ok {
			kept++
		}
	}
	t.Logf("%d of %d refs deleted while it measured were accounted", kept, len(deleted))
}

// compareAccounts reports where got differs from want, but for the refs in
// maybe: those may be missing from got (and out of the rings).
func compareAccounts(t *testing.T, got, want map[string]accountRef, maybe map[string]bool) {
	t.Helper()
	bad := 0
	for k, w := range want {
		g, ok := got[k]
		if !ok && maybe[k] {
			continue
		}
		if ok && maybe != nil {
			w.ring = slices.DeleteFunc(slices.Clone(w.ring), func(r string) bool {
				_, in := got[string(cache.KindBst1Artifact)+":"+r]
				return !in
			})
		}
		if !ok || !slices.Equal(g.closure, w.closure) || !slices.Equal(g.ring, w.ring) || g.used != w.used {
			if bad++; bad <= 5 {
				t.Errorf("ref %s: got %+v (there: %v), want %+v", k, g, ok, w)
			}
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("ref %s accounted, not in the serial account", k)
		}
	}
	if bad > 5 {
		t.Errorf("%d refs differ", bad)
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// fifoStore is measureStore with, after its refs, m artifacts whose root
// Directory is a FIFO: a reader of it waits until the test writes it.
// It returns the FIFOs' paths and what to write in each.
func fifoStore(tb testing.TB, n, m int) (*cache.Store, map[string][]byte) {
	tb.Helper()
	store := measureStore(tb, n)
	fifos := map[string][]byte{}
	for a := range m {
		root, blobs := measureTree(fmt.Sprint("fifo", a))
		for d, b := range blobs {
			if d == root {
				p := store.ObjectPath(d)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					tb.Fatal(err)
				}
				if err := unix.Mkfifo(p, 0o644); err != nil {
					tb.Fatal(err)
				}
				fifos[p] = b
				continue
			}
			if err := store.PutBytes(d, b); err != nil {
				tb.Fatal(err)
			}
		}
		if err := store.SetRef(cache.KindBst1Artifact, fmt.Sprintf("zfifo/e%05d", a), buildstream.V1RefContent(root)); err != nil {
			tb.Fatal(err)
		}
	}
	return store, fifos
}

// holdReaders opens for writing, without blocking, each FIFO in fifos not
// in held yet that a reader has open, and adds it to held.
func holdReaders(tb testing.TB, fifos map[string][]byte, held map[string]*os.File) {
	tb.Helper()
	for p := range fifos {
		if held[p] != nil {
			continue
		}
		fd, err := unix.Open(p, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENXIO) {
			continue // no reader
		}
		if err != nil {
			tb.Fatal(err)
		}
		held[p] = os.NewFile(uintptr(fd), p)
	}
}

// release writes each held FIFO's content and closes it, ending its read.
func release(fifos map[string][]byte, held map[string]*os.File) {
	for p, f := range held {
		if f != nil {
			f.Write(fifos[p])
			f.Close()
			held[p] = nil
			delete(fifos, p)
		}
	}
}

// The reads in flight are as many as the readers, never more: each reader
// waits on a FIFO's Directory, and the walk starts no other read.
func TestQuotaMeasureReadsInFlightBounded(t *testing.T) {
	const readers, m = 4, 24
	store, fifos := fifoStore(t, 9, m)
	q := unknownAccount(t, store)
	done := make(chan error, 1)
	go func() { done <- q.measure(readers) }()
	held := map[string]*os.File{}
	t.Cleanup(func() { release(fifos, held) })
	most := 0
	for deadline := time.Now().Add(20 * time.Second); len(fifos) > 0; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d FIFOs still unread, %d of them being read", len(fifos), len(held))
		}
		holdReaders(t, fifos, held)
		if len(held) > readers {
			t.Fatalf("%d reads in flight, want at most %d", len(held), readers)
		}
		most = max(most, len(held))
		if len(held) == min(readers, len(fifos)) {
			release(fifos, held)
			clear(held)
		}
	}
	if most != readers {
		t.Errorf("at most %d reads in flight, want %d", most, readers)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("measure did not end once every ref could be read")
	}
	if refs, _ := snapshot(t, q); len(refs) != 9*2+m {
		t.Errorf("%d refs accounted, want %d", len(refs), 9*2+m)
	}
}

// Stopping the server mid-measure ends it once the reads under way end,
// starting no other and applying none of them: every ref accounted is
// whole, and needs counts are the refs naming each object.
func TestQuotaMeasureStopsMidWay(t *testing.T) {
	const readers, n, m = 4, 60, 12
	store, fifos := fifoStore(t, n, m)
	serial := unknownAccount(t, measureStore(t, n))
	q := unknownAccount(t, store)
	done := make(chan error, 1)
	go func() { done <- q.measure(readers) }()
	held := map[string]*os.File{}
	t.Cleanup(func() { release(fifos, held) })
	for deadline := time.Now().Add(20 * time.Second); len(held) < readers; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d readers came to the FIFOs", len(held), readers)
		}
		holdReaders(t, fifos, held)
	}
	close(q.quit)
	release(fifos, held)
	select {
	case err := <-done:
		if !errors.Is(err, errStopped) {
			t.Fatalf("measure returned %v, want %v", err, errStopped)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("measure did not return once the reads under way ended")
	}
	got, _ := snapshot(t, q)
	for k := range got {
		if strings.Contains(k, "zfifo/") {
			t.Errorf("ref %s, read after the server stopped, was accounted", k)
		}
	}
	if len(got) != n*2 {
		t.Errorf("%d refs accounted, want the %d read before it stopped", len(got), n*2)
	}
	// What was applied is what one reader applies for those refs.
	if err := serial.measure(1); err != nil {
		t.Fatal(err)
	}
	want, _ := snapshot(t, serial)
	for k, g := range got {
		if w := want[k]; !slices.Equal(g.closure, w.closure) || !slices.Equal(g.ring, w.ring) {
			t.Errorf("ref %s: %+v, want %+v", k, g, w)
		}
	}
}
