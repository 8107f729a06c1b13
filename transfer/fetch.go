package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/remotes"
)

// fetcher brings blobs into the local store from storage caches in
// priority order, each blob from the first cache that has it. Blobs wanted
// by several refs at once are downloaded once.
type fetcher struct {
	store  *cache.Store
	caches []*Cache
	strict bool
	ev     Events

	// flights are the blobs being downloaded.
	flights flights[digest.Digest]

	mu sync.Mutex
	// planned are the blobs already counted in the run's total, so
	// that blobs several refs share count once.
	planned map[digest.Digest]struct{}

	blobs, bytes atomic.Int64 // moved
	present      atomic.Int64 // already local
	// inflight weighs the downloads under way (see inflightBytes).
	inflight *semaphore.Weighted
	// keep, when positive, is the largest blob fetched: a mirror's quota.
	// Larger ones are left where they are, as if no cache had them.
	keep int64
	// commits writes the refs of the artifacts fetched.
	commits *commits
	// has is the store's Has, for every lookup of a blob to fetch
	// (tests count them).
	has func(digest.Digest) (bool, error)
}

// newFetcher is a fetcher whose refs' writes wait for each other while
// refs move bytes in jobs' slots (commits); with jobs nil, each is written
// at once.
func newFetcher(store *cache.Store, caches []*Cache, strict bool, ev Events, jobs slots) *fetcher {
	return &fetcher{store: store, caches: caches, strict: strict, ev: ev, planned: map[digest.Digest]struct{}{},
		inflight: semaphore.NewWeighted(inflightBytes), commits: newCommits(store, jobs), has: store.Has}
}

// watch follows one ref's fetch: how many blobs its index hit's cache
// turned out to lack and, with evidence, which blobs were already local
// (they still need a storage cache to confirm them). It is safe for the
// ref's concurrent fetches.
type watch struct {
	cache    *Cache
	evidence bool
	// slot is the ref's right to move bytes, taken before any download.
	slot *slot

	mu    sync.Mutex
	lacks int
	held  []digest.Digest
}

func (w *watch) hold(ds ...digest.Digest) {
	if w != nil && w.evidence {
		w.mu.Lock()
		w.held = append(w.held, ds...)
		w.mu.Unlock()
	}
}

// moving takes the ref's slot before bytes move for it, and says whether
// it had to wait for one (other refs may have stored blobs meanwhile).
func (w *watch) moving(ctx context.Context) (waited bool, err error) {
	if w == nil {
		return false, nil
	}
	return w.slot.take(ctx)
}

// lacked counts blobs c turned out to lack, when c is the hit's cache.
func (w *watch) lacked(c *Cache, n int) {
	if w != nil && w.cache == c {
		w.mu.Lock()
		w.lacks += n
		w.mu.Unlock()
	}
}

// closure makes every digest under roots local and returns those no cache
// had. With tops, the bytes of the roots' Directories and of their
// children are kept there, for a caller that reads them next (a
// BuildStream 1 artifact's meta/). Directories are fetched level by level, so each level's files and
// subdirectories are known before they are asked for; GetTree, where a
// cache has it, brings a whole tree in one call. A level's files are
// fetched while the walk goes on to the next level, so the walk's round
// trips overlap the bulk of the bytes instead of coming before them.
func (f *fetcher) closure(ctx context.Context, roots cache.Roots, w *watch, tops map[digest.Digest][]byte) (missing []digest.Digest, err error) {
	files, fctx := errgroup.WithContext(ctx)
	var mu sync.Mutex
	fetchFiles := func(ds []digest.Digest) {
		if len(ds) == 0 {
			return
		}
		files.Go(func() error {
			miss, err := f.fetch(fctx, ds, w, nil)
			mu.Lock()
			missing = append(missing, miss...)
			mu.Unlock()
			return err
		})
	}
	walkErr := f.walk(fctx, roots, w, tops, fetchFiles, func(miss []digest.Digest) {
		mu.Lock()
		missing = append(missing, miss...)
		mu.Unlock()
	})
	if err := files.Wait(); walkErr == nil {
		walkErr = err
	}
	if walkErr != nil {
		return nil, walkErr
	}
	return missing, nil
}

// walk fetches the Directories under roots level by level and hands each
// level's new files to files as soon as the level is read; Directories no
// cache had go to lost. A Directory this walk stored is read from the
// bytes it downloaded (they were checked against their digest), not read
// back and hashed again; one the store held already is read from it.
// The first two levels' Directories go to tops, when not nil.
func (f *fetcher) walk(ctx context.Context, roots cache.Roots, w *watch, tops map[digest.Digest][]byte, files func([]digest.Digest), lost func([]digest.Digest)) error {
	t := cache.NewWalk(roots)
	seenFiles := 0
	level := t.Next()
	trees, from, err := f.getTrees(ctx, level, w)
	if err != nil {
		return err
	}
	for depth := 0; len(level) > 0; depth++ {
		files(t.Files[seenFiles:])
		seenFiles = len(t.Files)
		got := newStored(true)
		var rest []digest.Digest
		for _, d := range level {
			data, ok := trees[d]
			if !ok {
				rest = append(rest, d)
				continue
			}
			if local, err := f.has(d); err != nil {
				return err
			} else if local {
				w.hold(d)
			} else {
				// The key is the digest of these very bytes.
				if err := f.store.PutVerified(d, data); err != nil {
					return err
				}
				got.data[d] = data
				f.plan(d)
				f.moved(d)
				f.ev.bytes(d.Size)
				from.count(1, d.Size, 0)
			}
		}
		miss, err := f.fetch(ctx, rest, w, got)
		if err != nil {
			return err
		}
		lost(miss)
		missSet := setOf(miss)
		for _, d := range level {
			if missSet[d] {
				continue
			}
			data, ok := got.data[d]
			// The empty Directory (every artifact's logs/, often) is
			// known without reading it: fetch made it local.
			if !ok && d != digest.Empty {
				if data, err = f.localDir(ctx, d, w); err != nil {
					return err
				}
			}
			if _, err := t.Add(d, data); err != nil {
				return err
			}
			if tops != nil && depth < 2 {
				tops[d] = data
			}
		}
		level = t.Next()
	}
	files(t.Files[seenFiles:])
	return nil
}

// stored is what a fetch made local of the blobs it was asked for and,
// when it keeps data, the bytes of those it downloaded in batches
// (checked against their digests), for a caller that reads them next.
// It is safe for concurrent use.
type stored struct {
	mu    sync.Mutex
	local map[digest.Digest]bool
	// data keeps the bytes; nil keeps none.
	data map[digest.Digest][]byte
}

func newStored(keepData bool) *stored {
	s := &stored{local: map[digest.Digest]bool{}}
	if keepData {
		s.data = map[digest.Digest][]byte{}
	}
	return s
}

// add records d as local, with a copy of its bytes (data's pieces
// joined) when they are kept and given (data is the caller's to reuse).
func (s *stored) add(d digest.Digest, data ...[]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.local[d] = true
	if s.data != nil && data != nil {
		s.data[d] = bytes.Join(data, nil)
	}
}

// without returns the blobs of ds not recorded as local.
func (s *stored) without(ds []digest.Digest) []digest.Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []digest.Digest
	for _, d := range ds {
		if !s.local[d] {
			out = append(out, d)
		}
	}
	return out
}

// localDir reads a Directory the store holds. One that does not match its
// digest is removed and fetched again, with a warning, so a damaged object
// never blocks its ref.
func (f *fetcher) localDir(ctx context.Context, d digest.Digest, w *watch) ([]byte, error) {
	data, err := f.store.ReadBlob(d)
	if !errors.Is(err, cache.ErrDigestMismatch) {
		return data, err
	}
	f.ev.Warn(fmt.Sprintf("%v: removed, fetching it again", err))
	if err := f.store.RemoveObject(d); err != nil {
		return nil, err
	}
	miss, err := f.fetch(ctx, []digest.Digest{d}, w, nil)
	if err != nil {
		return nil, err
	}
	if len(miss) > 0 {
		return nil, fmt.Errorf("directory %s was corrupt in the local store and no storage cache has it", d)
	}
	return f.store.ReadBlob(d)
}

// getTrees asks the first live storage cache with GetTree for the trees
// under roots the store lacks, taking the ref's slot first: this moves
// bytes. Directories are re-serialized and kept only where their digest
// matches, so nothing unverified is stored.
func (f *fetcher) getTrees(ctx context.Context, roots []digest.Digest, w *watch) (map[digest.Digest][]byte, *Cache, error) {
	out := map[digest.Digest][]byte{}
	var need []digest.Digest
	for _, d := range roots {
		if ok, _ := f.has(d); !ok {
			need = append(need, d)
		}
	}
	if len(need) == 0 {
		return out, nil, nil
	}
	if _, err := w.moving(ctx); err != nil {
		return nil, nil, err
	}
	for _, c := range f.caches {
		r, err := c.connect(ctx, f.ev)
		if err != nil || !c.caps.GetTree {
			continue
		}
		for _, root := range need {
			dirs, err := r.GetTree(ctx, root)
			if errors.Is(err, remotes.ErrBadTree) {
				c.warnOnce("bad-tree", fmt.Sprintf("%s; reading Directories level by level instead", c.describe(err)), f.ev)
			}
			if err != nil {
				break // level by level instead
			}
			keepDirs(out, dirs)
		}
		return out, c, nil
	}
	return out, nil, nil
}

// keepDirs adds a GetTree answer's Directories to out by digest: each is
// re-serialized and kept only where it hashes to a digest of the tree.
func keepDirs(out map[digest.Digest][]byte, dirs []*repb.Directory) {
	for _, dir := range dirs {
		data, err := proto.MarshalOptions{Deterministic: true}.Marshal(dir)
		if err == nil {
			out[digest.NewFromBlob(data)] = data
		}
	}
}

// fetch makes the given blobs local and returns those no cache had. What
// it stores it records in got, when not nil. Each blob is looked up in the
// store once, before it is claimed, and again only when the ref waited
// for its slot since (other refs stored blobs meanwhile) or another ref
// was downloading it; what the downloads stored is known without asking
// the store again.
func (f *fetcher) fetch(ctx context.Context, ds []digest.Digest, w *watch, got *stored) (missing []digest.Digest, err error) {
	need, err := f.lookUp(ds, w)
	if err != nil {
		return nil, err
	}
	need, tooLarge := f.kept(need)
	defer func() { missing = append(missing, tooLarge...) }()
	if len(need) > 0 {
		waited, err := w.moving(ctx)
		if err != nil {
			return nil, err
		}
		if waited {
			if need, err = f.lookUp(need, w); err != nil {
				return nil, err
			}
		}
	}
	f.plan(need...)
	if got == nil {
		got = newStored(false)
	}
	for _, c := range f.caches {
		if len(need) == 0 {
			break
		}
		r, err := c.connect(ctx, f.ev)
		if err != nil {
			if f.strict {
				return nil, err
			}
			continue
		}
		lacks, err := f.fetchFrom(ctx, c, r, need, got)
		w.lacked(c, lacks)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			var re *remotes.Error
			if !errors.As(err, &re) {
				// Not the cache's fault (no space, a write error): no
				// other cache would do better.
				return nil, err
			}
			if f.strict {
				c.asked(err)
				return nil, err
			}
			c.failed(err, f.ev)
		}
		need = got.without(need)
	}
	if len(need) == 0 {
		return nil, nil
	}
	// Another process may have stored some since they were claimed.
	need, _, err = f.notLocal(need)
	return need, err
}

// kept splits need into the blobs this store keeps and those larger than
// it keeps (keep), with a warning for each of those.
func (f *fetcher) kept(need []digest.Digest) (keep, tooLarge []digest.Digest) {
	if f.keep <= 0 {
		return need, nil
	}
	for _, d := range need {
		if d.Size > f.keep {
			tooLarge = append(tooLarge, d)
			f.ev.Warn(fmt.Sprintf("blob %s is larger than this store keeps (%d bytes): not fetched", d, f.keep))
		} else {
			keep = append(keep, d)
		}
	}
	return keep, tooLarge
}

// lookUp returns the blobs of ds the store lacks, counting those it holds
// as present for w.
func (f *fetcher) lookUp(ds []digest.Digest, w *watch) ([]digest.Digest, error) {
	need, held, err := f.notLocal(ds)
	if err != nil {
		return nil, err
	}
	f.present.Add(int64(len(held)))
	w.hold(held...)
	return need, nil
}

// notLocal splits ds into blobs the store lacks and blobs it holds, each
// once. The empty blob is always written locally: servers need not hold
// it.
func (f *fetcher) notLocal(ds []digest.Digest) (need, held []digest.Digest, err error) {
	seen := map[digest.Digest]bool{}
	for _, d := range ds {
		if seen[d] {
			continue
		}
		seen[d] = true
		ok, err := f.has(d)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case ok:
			held = append(held, d)
		case d.Size == 0:
			if err := f.store.PutBytes(d, nil); err != nil {
				return nil, nil, err
			}
		default:
			need = append(need, d)
		}
	}
	return need, held, nil
}

// fetchFrom downloads from one cache whichever of need it has: small blobs
// in batches within its limit, large ones streamed to disk. Nothing asks
// first what the cache has: a batch answers NOT_FOUND per blob and a stream
// as a whole, which costs the server less than FindMissingBlobs and saves
// a round trip per tree level. It records in got what it made local, and
// returns how many of need the cache lacks.
//
// Refs fetching the same blobs at once cannot deadlock, by construction:
// a blob is claimed without waiting (claimAll), and a claim is held only
// by a download that is started or by a fetchFrom that is starting its
// own downloads, which waits for nothing but those downloads (a slot in
// its group). A download waits for nothing but the cache (its
// max-concurrency) and the run's byte budget (one share at a time: see
// batch), both held only by requests in flight. Only once all of its own
// downloads are started does a fetchFrom wait for other refs' claims, so
// no one it waits for ever waits for it: the waits form no cycle.
func (f *fetcher) fetchFrom(ctx context.Context, c *Cache, r remote, need []digest.Digest, got *stored) (int, error) {
	var lacks atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	// Requests in flight are bounded by the cache's max-concurrency inside
	// remotes; this bounds the goroutines of this call.
	g.SetLimit(max(c.Config.MaxConcurrency, 1))
	waitErr := func() error {
		for len(need) > 0 {
			mine, theirs := f.claimAll(need)
			f.start(gctx, g, c, r, mine, &lacks, got)
			// Another ref is fetching each of theirs, maybe from another
			// cache. Once it is done, the blob is local, or that cache
			// lacked it and this one is asked: it is claimed again.
			need = nil
			for _, t := range theirs {
				select {
				case <-t.done:
				case <-gctx.Done():
					return ctx.Err() // else g.Wait says why
				}
				local, err := f.has(t.d)
				if err != nil {
					return err
				}
				if local {
					got.add(t.d)
				} else {
					need = append(need, t.d)
				}
			}
		}
		return nil
	}()
	if err := g.Wait(); err != nil {
		return int(lacks.Load()), err
	}
	return int(lacks.Load()), waitErr
}

// flight is a blob another ref is downloading: done is closed when it is
// through, whether or not it stored the blob.
type flight struct {
	d    digest.Digest
	done <-chan struct{}
}

// claimAll claims every blob of need nobody is downloading, without
// waiting, and returns them (mine) and the flights of the others. A blob
// claimed is not looked up again: need was made just before (fetch), and
// one another ref or process stored since is found when the download is
// linked into place, and left as it is.
func (f *fetcher) claimAll(need []digest.Digest) (mine []digest.Digest, theirs []flight) {
	for _, d := range need {
		if ok, wait := f.flights.claim(d); ok {
			mine = append(mine, d)
		} else {
			theirs = append(theirs, flight{d, wait})
		}
	}
	return mine, theirs
}

// start downloads the claimed blobs mine in g, each released when its
// download is through, recording in got what they store.
func (f *fetcher) start(ctx context.Context, g *errgroup.Group, c *Cache, r remote, mine []digest.Digest, lacks *atomic.Int64, got *stored) {
	batches, streamed := r.Plan(mine)
	for _, d := range streamed {
		g.Go(func() error {
			defer f.flights.release(d)
			found, err := f.stream(ctx, c, r, d, got)
			if !found {
				lacks.Add(1)
			}
			return err
		})
	}
	for _, b := range batches {
		g.Go(func() error {
			defer f.flights.release(b...)
			missing, err := f.batch(ctx, c, r, b, got)
			lacks.Add(int64(missing))
			return err
		})
	}
}

// batch reads small blobs in one call (BatchReadEach verifies each),
// records those it stores in got, and returns how many the cache lacks.
func (f *fetcher) batch(ctx context.Context, c *Cache, r remote, ds []digest.Digest, got *stored) (int, error) {
	release, err := f.reserve(ctx, sizeOf(ds))
	if err != nil {
		return 0, err
	}
	var blobs, bytes int64
	missing, err := r.BatchReadEach(ctx, ds, func(d digest.Digest, data [][]byte) error {
		// BatchReadEach checked each blob against its digest.
		if err := f.store.PutVerified(d, data...); err != nil {
			return err
		}
		got.add(d, data...)
		f.moved(d)
		f.ev.bytes(d.Size)
		blobs++
		bytes += d.Size
		return nil
	})
	if errors.Is(err, remotes.ErrTooLarge) {
		// A blob too large for any batch the cache takes: stream it.
		// Each stream takes its own share of the budget: this one is
		// given back first, or they could wait for it for ever. Halves
		// of the batch that fit are stored already.
		release()
		lacks := 0
		for _, d := range ds {
			if local, err := f.has(d); err != nil {
				return lacks, err
			} else if local {
				got.add(d)
				continue
			}
			ok, err := f.stream(ctx, c, r, d, got)
			if err != nil {
				return lacks, err
			}
			if !ok {
				lacks++
			}
		}
		return lacks, nil
	}
	defer release()
	if errors.Is(err, remotes.ErrCorrupt) {
		c.refused(err)
		f.ev.Warn(fmt.Sprintf("cache %s (%s) sent corrupt data, not stored: %v", c.Name(), c.Config.URL, err))
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	c.count(int(blobs), bytes, 0)
	return len(missing), nil
}

// stream reads one large blob into the store's verifying writer, and
// records it in got once stored. found is false when the cache does not
// have it. A download cut short (an
// interruption, a failed cache) keeps its bytes in the store's temporary
// directory, and the next download of the blob, in this run or the next,
// reads only the rest (read_offset).
func (f *fetcher) stream(ctx context.Context, c *Cache, r remote, d digest.Digest, got *stored) (found bool, err error) {
	release, err := f.reserve(ctx, min(d.Size, streamWeight))
	if err != nil {
		return true, err
	}
	defer release()
	kept, err := f.download(ctx, r, d)
	if kept > 0 && errors.Is(err, cache.ErrDigestMismatch) {
		// The kept bytes may be the bad ones: once more from the start.
		kept, err = f.download(ctx, r, d)
	}
	switch {
	case err == nil:
	case errors.Is(err, remotes.ErrNotFound):
		return false, nil // the next cache may have it
	case errors.Is(err, cache.ErrDigestMismatch), errors.Is(err, remotes.ErrCorrupt):
		// Caught on the way in (a bad zstd stream, too many bytes) or
		// when the hash is checked: never stored, the next cache is asked.
		c.refused(err)
		f.ev.Warn(fmt.Sprintf("cache %s (%s) sent corrupt data, not stored: %v", c.Name(), c.Config.URL, err))
		return true, nil
	case errors.Is(err, cache.ErrNoSpace):
		return true, fmt.Errorf("blob %s: %w", d, err)
	default:
		return true, err
	}
	got.add(d)
	// Bytes kept from an earlier download did not move in this one.
	f.blobs.Add(1)
	f.bytes.Add(d.Size - kept)
	c.count(1, d.Size-kept, 0)
	return true, nil
}

// download reads d into the store, after the bytes a download cut short
// kept, and says how many there were. Corrupt data is removed; what came
// before any other failure is kept for the next download.
func (f *fetcher) download(ctx context.Context, r remote, d digest.Digest) (kept int64, err error) {
	w, err := f.store.ResumableWriter(d)
	if err != nil {
		return 0, err
	}
	kept = w.Written()
	f.ev.bytes(kept) // progress counts them as here
	err = f.store.Room(d.Size - kept)
	if err == nil && kept < d.Size {
		err = r.ReadBlobFrom(ctx, d, kept, countingWriter{w, f.ev.bytes})
	}
	switch {
	case err == nil:
		err = w.Commit() // the bytes are removed when they do not match
	case errors.Is(err, cache.ErrDigestMismatch), errors.Is(err, remotes.ErrCorrupt):
		w.Abort()
	default:
		w.Keep()
	}
	return kept, err
}

// inflightBytes bounds the bytes of downloads in flight in a run: a batch
// answer is held in memory until it is stored, so 64 requests of 4 MiB
// batches would be 256 MiB. 32 MiB fills a 1 Gbit/s link with 250 ms of
// round trip, or 200 Mbit/s with more than a second.
const inflightBytes = 32 << 20

// streamWeight is what a stream of a larger blob counts against
// inflightBytes. It goes to disk as it comes, but holds the message it is
// writing while the next comes in (serve sends 1 MiB messages,
// bazel-remote 2 MiB), and HTTP/2 lets more arrive meanwhile: a stream
// holds a few MiB. Counted as 1 MiB, 32 streams ran at once and held
// 85-105 MiB (a pull of 40 blobs of 4 MiB from bazel-remote): the heap
// grew to 150 MiB, and a third of the pull's CPU time went to first
// touching that memory and copying into it.
const streamWeight = 4 << 20

// reserve waits until n more bytes (at most inflightBytes) may be in
// flight and returns the function that gives them back.
func (f *fetcher) reserve(ctx context.Context, n int64) (func(), error) {
	n = min(max(n, 1), inflightBytes)
	if err := f.inflight.Acquire(ctx, n); err != nil {
		return nil, err
	}
	return func() { f.inflight.Release(n) }, nil
}

// moved counts a blob stored; progress counts its bytes as they come.
func (f *fetcher) moved(d digest.Digest) {
	f.blobs.Add(1)
	f.bytes.Add(d.Size)
}

// plan adds the blobs not counted yet to the run's total; without an
// OnPlan to tell, it keeps nothing.
func (f *fetcher) plan(ds ...digest.Digest) {
	if f.ev.OnPlan == nil {
		return
	}
	var n int64
	f.mu.Lock()
	for _, d := range ds {
		if _, ok := f.planned[d]; !ok {
			f.planned[d] = struct{}{}
			n += d.Size
		}
	}
	f.mu.Unlock()
	f.ev.plan(n)
}

func setOf(ds []digest.Digest) map[digest.Digest]bool {
	m := make(map[digest.Digest]bool, len(ds))
	for _, d := range ds {
		m[d] = true
	}
	return m
}
