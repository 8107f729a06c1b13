package transfer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/remotes"
)

// fakeCache is an in-memory cache for the engine's own logic: a CAS and a
// BuildStream 1 index, with faults. It is no proof of a protocol (the
// commands tests run real servers); it lets each rule of the priority
// walk be tested alone and fast.
type fakeCache struct {
	name string
	// unreachable: dialling fails as for a dead cache.
	unreachable bool
	// indexErr: every index lookup fails with this code.
	indexErr codes.Code
	// batchTooLarge: every batch read is refused as too large, as by a
	// server whose real limit is below the one it advertises.
	batchTooLarge bool
	// maxBatch is the batch limit advertised; 1 MiB when 0.
	maxBatch int64
	// corrupt: every blob read comes back altered (a batch read says so,
	// as remotes' does after checking each blob).
	corrupt bool

	// found, when set, runs in every FindMissing once its answer is
	// made, before it is returned.
	found func()
	// streamDelay holds each ByteStream read open that long.
	streamDelay time.Duration

	mu     sync.Mutex
	blobs  map[digest.Digest][]byte
	refs   map[string]digest.Digest
	reads  map[digest.Digest]int
	sends  map[digest.Digest]int
	pushes int
	// streams and peakStreams are the ByteStream reads open, now and
	// at most.
	streams, peakStreams int
	// lookups records each index lookup, when set.
	lookups *lookupLog
}

// lookupLog is the index lookups of some caches, in order: "cache op ref".
type lookupLog struct {
	mu      sync.Mutex
	entries []string
}

func newFake(name string) *fakeCache {
	return &fakeCache{name: name, blobs: map[digest.Digest][]byte{}, refs: map[string]digest.Digest{}, reads: map[digest.Digest]int{}, sends: map[digest.Digest]int{}}
}

func (f *fakeCache) err(op string, c codes.Code) error {
	return &remotes.Error{Cache: f.name, URL: "fake://" + f.name, Op: op, Code: c, Err: status.Error(c, op)}
}

// holding stores an artifact's blobs and names ref -> root.
func (f *fakeCache) holding(ref string, a art) *fakeCache {
	maps.Copy(f.blobs, a.blobs)
	f.refs[ref] = a.root
	return f
}

// lacking removes a blob, as an independent CAS eviction would.
func (f *fakeCache) lacking(d digest.Digest) *fakeCache {
	delete(f.blobs, d)
	return f
}

func (f *fakeCache) FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	var out []digest.Digest
	for _, d := range ds {
		if _, ok := f.blobs[d]; !ok {
			out = append(out, d)
		}
	}
	f.mu.Unlock()
	if f.found != nil {
		f.found()
	}
	return out, nil
}

func (f *fakeCache) BatchRead(ctx context.Context, ds []digest.Digest) (map[digest.Digest][]byte, []digest.Digest, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if f.batchTooLarge {
		return nil, nil, fmt.Errorf("BatchReadBlobs: %w", remotes.ErrTooLarge)
	}
	if f.corrupt {
		return nil, nil, fmt.Errorf("BatchReadBlobs: %w", remotes.ErrCorrupt)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	found := map[digest.Digest][]byte{}
	var missing []digest.Digest
	for _, d := range ds {
		if b, ok := f.blobs[d]; ok {
			found[d] = b
			f.reads[d]++
		} else {
			missing = append(missing, d)
		}
	}
	return found, missing, nil
}

func (f *fakeCache) BatchReadEach(ctx context.Context, ds []digest.Digest, fn func(digest.Digest, [][]byte) error) ([]digest.Digest, error) {
	found, missing, err := f.BatchRead(ctx, ds)
	if err != nil {
		return nil, err
	}
	for d, b := range found {
		if err := fn(d, [][]byte{b}); err != nil {
			return nil, err
		}
	}
	return missing, nil
}

func (f *fakeCache) ReadBlobFrom(ctx context.Context, d digest.Digest, off int64, w io.Writer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	b, ok := f.blobs[d]
	f.reads[d]++
	f.streams++
	f.peakStreams = max(f.peakStreams, f.streams)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.streams--
		f.mu.Unlock()
	}()
	if !ok {
		return f.err("ByteStream.Read", codes.NotFound)
	}
	time.Sleep(f.streamDelay)
	if f.corrupt {
		b = append([]byte{b[0] ^ 0xff}, b[1:]...)
	}
	// In messages, as a server streams.
	for b = b[off:]; len(b) > 0; {
		n := min(len(b), 64<<10)
		if _, err := w.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func (f *fakeCache) GetTree(context.Context, digest.Digest) ([]*repb.Directory, error) {
	return nil, f.err("GetTree", codes.Unimplemented)
}

// Plan packs blobs into batches of at most MaxBatchBytes.
func (f *fakeCache) Plan(ds []digest.Digest) (batches [][]digest.Digest, streamed []digest.Digest) {
	limit := f.MaxBatchBytes()
	var batch []digest.Digest
	var size int64
	for _, d := range ds {
		switch {
		case d.Size > limit:
			streamed = append(streamed, d)
			continue
		case size+d.Size > limit:
			batches = append(batches, batch)
			batch, size = nil, 0
		}
		batch = append(batch, d)
		size += d.Size
	}
	if len(batch) > 0 {
		batches = append(batches, batch)
	}
	return batches, streamed
}

// MaxBatchBytes is the batch limit the fake advertises: maxBatch, or
// 1 MiB.
func (f *fakeCache) MaxBatchBytes() int64 {
	if f.maxBatch > 0 {
		return f.maxBatch
	}
	return 1 << 20
}

func (f *fakeCache) Send(ctx context.Context, ds []digest.Digest, open remotes.Opener, _ int) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for _, d := range ds {
		rc, err := open(d)
		if err != nil {
			return 0, err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return 0, err
		}
		f.blobs[d] = b
		f.sends[d]++
		n += d.Size
	}
	return n, nil
}

func (f *fakeCache) lookup(op, ref string) (digest.Digest, error) {
	f.record(op, ref)
	if f.indexErr != codes.OK {
		return digest.Digest{}, f.err(op, f.indexErr)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.refs[ref]
	if !ok {
		return digest.Digest{}, f.err(op, codes.NotFound)
	}
	return d, nil
}

func (f *fakeCache) FetchDirectory(_ context.Context, uri string) (digest.Digest, error) {
	return f.lookup("FetchDirectory", strings.TrimPrefix(uri, buildstream.URNBst1Artifact))
}

func (f *fakeCache) FetchBlob(_ context.Context, uri string) (digest.Digest, error) {
	f.record("FetchBlob", strings.TrimPrefix(uri, buildstream.URNBst2Artifact))
	return digest.Digest{}, f.err("FetchBlob", codes.NotFound)
}

// record notes a lookup when the test asked for a log.
func (f *fakeCache) record(op, ref string) {
	if f.lookups == nil {
		return
	}
	f.lookups.mu.Lock()
	defer f.lookups.mu.Unlock()
	f.lookups.entries = append(f.lookups.entries, f.name+" "+op+" "+ref)
}

func (f *fakeCache) GetReference(_ context.Context, ref string) (digest.Digest, error) {
	return f.lookup("GetReference", ref)
}

func (f *fakeCache) PushDirectory(_ context.Context, uris []string, root digest.Digest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pushes++
	for _, u := range uris {
		f.refs[strings.TrimPrefix(u, buildstream.URNBst1Artifact)] = root
	}
	return nil
}

func (f *fakeCache) PushBlob(context.Context, []string, digest.Digest, []digest.Digest, []digest.Digest) error {
	return f.err("PushBlob", codes.Unimplemented)
}

func (f *fakeCache) UpdateReference(ctx context.Context, refs []string, d digest.Digest) error {
	return f.PushDirectory(ctx, slices.Clone(refs), d)
}

func (f *fakeCache) Close() error { return nil }

// cacheOf wraps fakes as the engine's caches, typed "all" unless given.
func cacheOf(fakes ...*fakeCache) []*Cache {
	var out []*Cache
	for _, f := range fakes {
		c := &Cache{Config: config.Cache{Name: f.name, URL: "fake://" + f.name, Type: config.TypeAll, MaxConcurrency: 4}}
		c.dial = func(context.Context, config.Cache, remote, ...remotes.Option) (remote, remotes.Capabilities, error) {
			if f.unreachable {
				return nil, remotes.Capabilities{}, f.err("probe", codes.Unavailable)
			}
			return f, remotes.Capabilities{CAS: true, BatchRead: true, BatchUpdate: true, RemoteAssetFetch: true, RemoteAssetPush: true}, nil
		}
		out = append(out, c)
	}
	return out
}

// art is a BuildStream 1 artifact: a root Directory over a files/
// Directory, and every blob.
type art struct {
	root  digest.Digest
	blobs map[digest.Digest][]byte
	files []digest.Digest
}

func artifact(contents ...string) art {
	a := art{blobs: map[digest.Digest][]byte{}}
	files := &repb.Directory{}
	for i, c := range contents {
		d := digest.NewFromBlob([]byte(c))
		a.blobs[d] = []byte(c)
		a.files = append(a.files, d)
		files.Files = append(files.Files, &repb.FileNode{Name: fmt.Sprintf("f%d", i), Digest: d.ToProto()})
	}
	fd := a.add(files)
	a.root = a.add(&repb.Directory{Directories: []*repb.DirectoryNode{{Name: "files", Digest: fd.ToProto()}}})
	return a
}

func (a *art) add(m proto.Message) digest.Digest {
	data, _ := proto.Marshal(m)
	d := digest.NewFromBlob(data)
	a.blobs[d] = data
	return d
}

// newEngine is a BuildStream 1 engine over a fresh local store.
func newEngine(t *testing.T, caches []*Cache, strict bool, warns *[]string) *Engine {
	t.Helper()
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	return &Engine{Store: store, Kind: cache.KindBst1Artifact, Caches: caches, Jobs: 4, Strict: strict, Events: Events{OnWarn: func(m string) {
		mu.Lock()
		*warns = append(*warns, m)
		mu.Unlock()
	}}}
}

// The priority walk's rules, one case each.
func TestPullRules(t *testing.T) {
	const ref = "demo/app/key"
	a := artifact("one", "two", strings.Repeat("big", 100))
	missingBlob := a.files[2]
	cases := []struct {
		name       string
		caches     func() []*fakeCache
		strict     bool
		status     Status
		from       string
		reason     []string // substrings of the reason
		warnings   int
		notReadOf  string // a cache that must not have served a blob
		localAfter bool
	}{
		{name: "the first cache that has it serves it", caches: func() []*fakeCache {
			return []*fakeCache{newFake("a").holding(ref, a), newFake("b").holding(ref, a)}
		}, status: StatusDone, from: "a", notReadOf: "b", localAfter: true},
		{name: "a dead cache costs one warning", caches: func() []*fakeCache {
			d := newFake("dead")
			d.unreachable = true
			return []*fakeCache{d, newFake("b").holding(ref, a)}
		}, status: StatusDone, from: "b", warnings: 1, localAfter: true},
		{name: "missing only when every cache answered", caches: func() []*fakeCache {
			return []*fakeCache{newFake("a"), newFake("b")}
		}, status: StatusMissing, reason: []string{"not in a, b"}},
		{name: "failed when a cache could not be asked", caches: func() []*fakeCache {
			d := newFake("dead")
			d.unreachable = true
			return []*fakeCache{d, newFake("a")}
		}, status: StatusFailed, reason: []string{"not in a", "could not ask cache dead"}, warnings: 1},
		{name: "an index error is not a miss", caches: func() []*fakeCache {
			e := newFake("erring")
			e.indexErr = codes.Internal
			return []*fakeCache{e, newFake("a")}
		}, status: StatusFailed, reason: []string{"could not ask cache erring"}, warnings: 1},
		{name: "an index error falls through to a cache that has it", caches: func() []*fakeCache {
			e := newFake("erring")
			e.indexErr = codes.Internal
			return []*fakeCache{e, newFake("b").holding(ref, a)}
		}, status: StatusDone, from: "b", warnings: 1, localAfter: true},
		{name: "a refused Remote Asset fetch is a miss", caches: func() []*fakeCache {
			e := newFake("bb")
			e.indexErr = codes.PermissionDenied
			return []*fakeCache{e, newFake("a")}
		}, status: StatusMissing, reason: []string{"not in bb, a"}, warnings: 1},
		{name: "blobs an index hit lacks come from the next storage cache", caches: func() []*fakeCache {
			return []*fakeCache{newFake("a").holding(ref, a).lacking(missingBlob), newFake("b").holding(ref, a)}
		}, status: StatusDone, from: "a", warnings: 1, localAfter: true},
		{name: "incomplete everywhere fails naming the blob", caches: func() []*fakeCache {
			return []*fakeCache{newFake("a").holding(ref, a).lacking(missingBlob)}
		}, status: StatusFailed, reason: []string{"incomplete everywhere", missingBlob.String()}, warnings: 2},
		{name: "strict fails on a dead cache", caches: func() []*fakeCache {
			d := newFake("dead")
			d.unreachable = true
			return []*fakeCache{d, newFake("b").holding(ref, a)}
		}, strict: true, status: StatusFailed, reason: []string{"cache dead"}, warnings: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fakes := c.caches()
			var warns []string
			e := newEngine(t, cacheOf(fakes...), c.strict, &warns)
			res, _ := e.Pull(context.Background(), []string{ref}, PullOptions{})
			r := res[0]
			if r.Status != c.status || r.Cache != c.from {
				t.Errorf("status %s from %q (%s); want %s from %q", r.Status, r.Cache, r.Reason, c.status, c.from)
			}
			for _, s := range c.reason {
				if !strings.Contains(r.Reason, s) {
					t.Errorf("reason %q does not say %q", r.Reason, s)
				}
			}
			if len(warns) != c.warnings {
				t.Errorf("%d warnings, want %d: %q", len(warns), c.warnings, warns)
			}
			for _, f := range fakes {
				if f.name == c.notReadOf && len(f.reads) > 0 {
					t.Errorf("cache %s served %d blobs", f.name, len(f.reads))
				}
			}
			_, err := e.Store.GetRef(cache.KindArtifact, ref)
			if local := err == nil; local != c.localAfter {
				t.Errorf("local ref written: %t, want %t", local, c.localAfter)
			}
			if c.localAfter {
				if _, missing, _ := e.Store.Closure(a.root); len(missing) > 0 {
					t.Errorf("local closure lacks %v", missing)
				}
			}
		})
	}
}

// Refs that share blobs download each shared blob once.
func TestPullSharedBlobsOnce(t *testing.T) {
	shared := strings.Repeat("shared", 50)
	f := newFake("a")
	var refs []string
	for i := range 8 {
		ref := fmt.Sprintf("demo/el%d/key", i)
		f.holding(ref, artifact(shared, fmt.Sprintf("own %d", i)))
		refs = append(refs, ref)
	}
	var warns []string
	e := newEngine(t, cacheOf(f), false, &warns)
	res, _ := e.Pull(context.Background(), refs, PullOptions{})
	for _, r := range res {
		if r.Status != StatusDone {
			t.Errorf("%s: %s %s", r.Ref, r.Status, r.Reason)
		}
	}
	if n := f.reads[digest.NewFromBlob([]byte(shared))]; n != 1 {
		t.Errorf("the shared blob was read %d times, want once", n)
	}
}

// Push: skipped only when complete, repaired when the target lacks blobs,
// a conflict over another digest unless forced.
func TestPushRules(t *testing.T) {
	const ref = "demo/app/key"
	a := artifact("one", "two")
	other := artifact("another build")
	cases := []struct {
		name   string
		target func() *fakeCache
		force  bool
		status Status
		pushes int
	}{
		{"a new ref goes", func() *fakeCache { return newFake("t") }, false, StatusDone, 1},
		{"a complete target is skipped", func() *fakeCache { return newFake("t").holding(ref, a) }, false, StatusSkipped, 0},
		{"an incomplete target is repaired", func() *fakeCache { return newFake("t").holding(ref, a).lacking(a.files[0]) }, false, StatusRepaired, 1},
		{"another digest is a conflict", func() *fakeCache { return newFake("t").holding(ref, other) }, false, StatusConflict, 0},
		{"--force overwrites it", func() *fakeCache { return newFake("t").holding(ref, other) }, true, StatusDone, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			target := c.target()
			var warns []string
			e := newEngine(t, nil, false, &warns)
			for d, b := range a.blobs {
				if err := e.Store.PutBytes(d, b); err != nil {
					t.Fatal(err)
				}
			}
			if err := e.Store.SetRef(cache.KindArtifact, ref, buildstream.V1RefContent(a.root)); err != nil {
				t.Fatal(err)
			}
			res, _ := e.Push(context.Background(), []string{ref}, cacheOf(target), PushOptions{Force: c.force})
			if res[0].Status != c.status || target.pushes != c.pushes {
				t.Errorf("status %s (%s), %d index writes; want %s, %d", res[0].Status, res[0].Reason, target.pushes, c.status, c.pushes)
			}
			if c.status == StatusRepaired || c.status == StatusDone {
				if missing, _ := target.FindMissing(context.Background(), slices.Collect(maps.Keys(a.blobs))); len(missing) > 0 {
					t.Errorf("the target lacks %v", missing)
				}
			}
		})
	}
}

// An index-only target gets its entry only once the blobs are confirmed on
// storage its readers use.
func TestPushIndexOnlyWaitsForStorage(t *testing.T) {
	const ref = "demo/app/key"
	a := artifact("one", "two")
	idx, stor := newFake("idx"), newFake("stor")
	stor.unreachable = true
	caches := cacheOf(idx, stor)
	caches[0].Config.Type, caches[1].Config.Type = config.TypeIndex, config.TypeStorage
	var warns []string
	e := newEngine(t, nil, false, &warns)
	for d, b := range a.blobs {
		e.Store.PutBytes(d, b)
	}
	e.Store.SetRef(cache.KindArtifact, ref, buildstream.V1RefContent(a.root))
	res, _ := e.Push(context.Background(), []string{ref}, caches, PushOptions{})
	if res[0].Status != StatusFailed || res[1].Status != StatusFailed || idx.pushes != 0 {
		t.Errorf("index %s, storage %s, %d index writes: want both failed and no index entry", res[0].Status, res[1].Status, idx.pushes)
	}
	if !strings.Contains(res[0].Reason, "index entry not written") {
		t.Errorf("reason %q: want it to say the index entry was not written", res[0].Reason)
	}
}

// A digest of absurd size is not streamed until the disk is full: the ref
// fails at once saying there is no space, not that no cache has the blob.
func TestPullChecksFreeSpace(t *testing.T) {
	const ref = "demo/huge/key"
	huge := digest.Digest{Hash: strings.Repeat("ab", 32), Size: 1 << 40}
	a := art{blobs: map[digest.Digest][]byte{}}
	a.root = a.add(&repb.Directory{Files: []*repb.FileNode{{Name: "huge", Digest: huge.ToProto()}}})
	f := newFake("a").holding(ref, a)
	var warns []string
	e := newEngine(t, cacheOf(f), false, &warns)
	res, _ := e.Pull(context.Background(), []string{ref}, PullOptions{})
	if res[0].Status != StatusFailed || !strings.Contains(res[0].Reason, "no space") || strings.Contains(res[0].Reason, "no storage cache") {
		t.Errorf("pull of a 1 TiB blob: %s (%s); want failed for no space", res[0].Status, res[0].Reason)
	}
	if f.reads[huge] != 0 {
		t.Error("the 1 TiB blob was read")
	}
}

// A Directory corrupted in the local store (same size, other bytes) does
// not block its ref: it is removed and fetched again, with one warning.
func TestPullRepairsACorruptLocalDirectory(t *testing.T) {
	const ref = "demo/app/key"
	a := artifact("one", "two")
	f := newFake("a").holding(ref, a)
	var warns []string
	e := newEngine(t, cacheOf(f), false, &warns)
	if res, _ := e.Pull(context.Background(), []string{ref}, PullOptions{}); res[0].Status != StatusDone {
		t.Fatalf("first pull: %+v", res[0])
	}
	p := e.Store.ObjectPath(a.root)
	data, _ := os.ReadFile(p)
	data[0] ^= 0xff
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	res, _ := e.Pull(context.Background(), []string{ref}, PullOptions{})
	if res[0].Status != StatusDone || len(warns) != 1 || !strings.Contains(warns[0], "fetching it again") {
		t.Errorf("pull over a corrupt local Directory: %s (%s), warnings %q", res[0].Status, res[0].Reason, warns)
	}
	if err := e.Store.Verify(a.root); err != nil {
		t.Errorf("the Directory was not repaired: %v", err)
	}
}

// A streamed blob whose download was cut short goes on from the bytes the
// store kept: only the rest moves. Kept bytes damaged on disk fail the
// digest check and the blob is fetched again from the start, without
// blaming the cache.
func TestPullResumesKeptBytes(t *testing.T) {
	const ref = "demo/big/key"
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB: streamed
	a := artifact(string(big))
	d := a.files[0]
	for _, tc := range []struct {
		name    string
		damage  bool
		maxMove int64
	}{
		{"intact", false, d.Size/2 + 1<<10},
		{"damaged", true, d.Size + 1<<10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var warns []string
			e := newEngine(t, cacheOf(newFake("a").holding(ref, a)), false, &warns)
			w, err := e.Store.ResumableWriter(d)
			if err != nil {
				t.Fatal(err)
			}
			kept := slices.Clone(big[:d.Size/2])
			if tc.damage {
				kept[100] ^= 1
			}
			w.Write(kept)
			w.Keep()
			res, st := e.Pull(context.Background(), []string{ref}, PullOptions{})
			if res[0].Status != StatusDone || len(warns) != 0 {
				t.Fatalf("pull: %s (%s), warnings %q", res[0].Status, res[0].Reason, warns)
			}
			if st.Pulled.Bytes > tc.maxMove || tc.damage && st.Pulled.Bytes < d.Size {
				t.Errorf("pulled %d bytes for a %d-byte blob with half of it kept", st.Pulled.Bytes, d.Size)
			}
			if err := e.Store.Verify(d); err != nil {
				t.Error(err)
			}
		})
	}
}
