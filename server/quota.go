package server

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
)

// DefaultLease is how long a blob reported present (FindMissingBlobs) or
// just uploaded is kept from eviction: long enough for a client to upload
// the rest and write the ref that names it.
const DefaultLease = 10 * time.Minute

// quota keeps the store's objects under a size limit. It keeps its own
// account of every object (size, last use, how many refs need it) and
// every ref (its closure, last use), built with one walk at start-up and
// kept up to date as blobs and refs are written and read, so an eviction
// pass plans in memory instead of walking the store.
//
// Eviction, down to 90% of the limit: first objects no ref needs whose
// lease ran out (uploads nobody named: abandoned pushes), oldest first;
// then whole refs, least recently used first, with the objects no
// remaining ref needs unless their lease still runs (a ref that would free
// nothing now stays). A leased object is never removed, so a push never
// fails for eviction: the store may pass its limit by what clients use
// within the lease, up to a hard cap (half the limit again) past which new
// uploads are refused with RESOURCE_EXHAUSTED until leases run out.
type quota struct {
	s     *Server
	limit int64
	lease time.Duration
	kick  chan struct{}
	quit  chan struct{}
	wg    sync.WaitGroup

	mu      sync.Mutex
	objects map[digest.Digest]*object
	refs    map[refKey]*refRecord
	used    int64 // bytes of objects
}

// object is one stored blob. Its lease runs from the later of two times:
// uploaded, which the push that names it ends, and used (reported present
// or read), which only time ends: another client may have been told the
// blob is there and be about to name it.
type object struct {
	uploaded time.Time
	used     time.Time
	needs    int // refs that need it
}

// leasedAt is when the object's lease started.
func (o *object) leasedAt() time.Time {
	if o.uploaded.After(o.used) {
		return o.uploaded
	}
	return o.used
}

type refKey struct {
	kind cache.Kind
	ref  string
}

type refRecord struct {
	closure []digest.Digest
	used    time.Time
}

func newQuota(s *Server, limit int64, lease time.Duration) (*quota, error) {
	q := &quota{s: s, limit: limit, lease: lease, kick: make(chan struct{}, 1), quit: make(chan struct{}),
		objects: map[digest.Digest]*object{}, refs: map[refKey]*refRecord{}}
	if err := s.store.WalkObjects(func(o cache.ObjectInfo) error {
		q.objects[o.Digest] = &object{used: o.Modified}
		q.used += o.Digest.Size
		return nil
	}); err != nil {
		return nil, fmt.Errorf("measuring the store: %w", err)
	}
	for _, kind := range cache.Kinds {
		infos, err := s.store.ListRefs(kind, "")
		if err != nil {
			return nil, err
		}
		for _, info := range infos {
			closure, err := s.refClosure(kind, info.Name)
			if err != nil {
				s.logf("quota: %s ref %s is unreadable, left alone: %v", kind, info.Name, err)
				continue
			}
			q.setRefLocked(refKey{kind, info.Name}, closure, info.Accessed)
		}
	}
	q.wg.Add(1)
	go q.loop()
	q.kickIfOver()
	return q, nil
}

// stored accounts for a new object, leased from now.
func (q *quota) stored(d digest.Digest, now time.Time) {
	q.mu.Lock()
	if o := q.objects[d]; o != nil {
		o.uploaded = now
	} else {
		q.objects[d] = &object{uploaded: now}
		q.used += d.Size
	}
	q.mu.Unlock()
	q.kickIfOver()
}

// use renews an object's lease: it was reported present or read.
func (q *quota) use(d digest.Digest, now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if o := q.objects[d]; o != nil {
		o.used = now
	}
}

// setRef accounts for a ref written with its closure. The push that
// wrote it is done, so the upload lease of what it names ends: from now
// on the ref keeps them, as the most recently used ref. A lease from a
// client told a blob is present runs on: that client may be about to name
// it in a ref of its own (a blob every push shares was evicted between
// one client's FindMissingBlobs and its ref when another's push ended it).
func (q *quota) setRef(kind cache.Kind, ref string, closure []digest.Digest, now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.setRefLocked(refKey{kind, ref}, closure, now)
	for _, d := range closure {
		if o := q.objects[d]; o != nil {
			o.uploaded = time.Time{}
		}
	}
}

func (q *quota) setRefLocked(k refKey, closure []digest.Digest, now time.Time) {
	if old := q.refs[k]; old != nil {
		q.release(old.closure)
	}
	seen := make(map[digest.Digest]bool, len(closure))
	var own []digest.Digest
	for _, d := range closure {
		if o := q.objects[d]; o != nil && !seen[d] {
			seen[d] = true
			o.needs++
			own = append(own, d)
		}
	}
	q.refs[k] = &refRecord{closure: own, used: now}
}

// useRef marks a ref as read now.
func (q *quota) useRef(kind cache.Kind, ref string, now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if r := q.refs[refKey{kind, ref}]; r != nil {
		r.used = now
	}
}

func (q *quota) release(closure []digest.Digest) {
	for _, d := range closure {
		if o := q.objects[d]; o != nil && o.needs > 0 {
			o.needs--
		}
	}
}

// usedBytes is what the objects take.
func (q *quota) usedBytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.used
}

func (q *quota) kickIfOver() {
	if q.usedBytes() > q.limit {
		select {
		case q.kick <- struct{}{}:
		default:
		}
	}
}

func (q *quota) stop() {
	close(q.quit)
	q.wg.Wait()
}

func (q *quota) loop() {
	defer q.wg.Done()
	for {
		select {
		case <-q.quit:
			return
		case <-q.kick:
			if n, freed, err := q.evict(time.Now()); err != nil {
				q.s.logf("eviction failed: %v", err)
			} else if n > 0 || freed > 0 {
				q.s.logf("quota: evicted %d refs, freed %d bytes; %d of %d bytes used", n, freed, q.usedBytes(), q.limit)
			}
		}
	}
}

// evict brings the store down to 90% of the limit (see quota). Index
// writes wait meanwhile (refsMu), so a ref is never written over blobs
// being removed; the plan itself is made in memory.
func (q *quota) evict(now time.Time) (refs int, freed int64, err error) {
	s := q.s
	s.refsMu.Lock()
	defer s.refsMu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.used <= q.limit {
		return 0, 0, nil
	}
	target := q.limit / 10 * 9
	remove := func(d digest.Digest) {
		if d == emptyDigest || q.objects[d] == nil {
			return
		}
		if err := s.store.RemoveObject(d); err != nil {
			s.logf("quota: removing %s: %v", d, err)
			return
		}
		delete(q.objects, d)
		q.used -= d.Size
		freed += d.Size
	}
	leased := func(o *object) bool { return now.Sub(o.leasedAt()) < q.lease }

	// Unreferenced objects past their lease, oldest first.
	for _, d := range q.loose(func(o *object) bool { return !leased(o) }) {
		if q.used <= target {
			return refs, freed, nil
		}
		remove(d)
	}
	// Whole refs, least recently used first.
	keys := make([]refKey, 0, len(q.refs))
	for k := range q.refs {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return q.refs[keys[i]].used.Before(q.refs[keys[j]].used) })
	for _, k := range keys {
		if q.used <= target {
			return refs, freed, nil
		}
		if !q.frees(q.refs[k], leased) {
			continue // its blobs are in use: deleting it would free nothing now
		}
		if err := s.store.DeleteRef(k.kind, k.ref); err != nil && !errors.Is(err, cache.ErrNotFound) {
			s.logf("quota: removing %s ref %s: %v", k.kind, k.ref, err)
			continue
		}
		r := q.refs[k]
		delete(q.refs, k)
		refs++
		q.release(r.closure)
		for _, d := range r.closure {
			if o := q.objects[d]; o != nil && o.needs == 0 && !leased(o) {
				remove(d)
			}
		}
	}
	if q.used > q.limit {
		s.logf("quota: still %d bytes over the limit of %d: blobs clients are using (their lease runs %s)", q.used-q.limit, q.limit, q.lease)
	}
	return refs, freed, nil
}

// admit refuses a new upload of n bytes once the store is at its hard cap
// (half the limit past it), so leased blobs cannot grow it without bound.
func (q *quota) admit(n int64) error {
	hard := q.limit + q.limit/2
	if used := q.usedBytes(); used+n > hard {
		q.kickIfOver()
		return status.Errorf(codes.ResourceExhausted, "the server is full (%d bytes of a %d-byte quota, all in use by clients): try again shortly", used, q.limit)
	}
	return nil
}

// frees says whether deleting r would free an object now: one only r
// needs, whose lease ran out.
func (q *quota) frees(r *refRecord, leased func(*object) bool) bool {
	for _, d := range r.closure {
		if o := q.objects[d]; o != nil && o.needs == 1 && !leased(o) {
			return true
		}
	}
	return false
}

// loose lists the objects no ref needs that keep selects, oldest first.
func (q *quota) loose(keep func(*object) bool) []digest.Digest {
	var out []digest.Digest
	for d, o := range q.objects {
		if o.needs == 0 && keep(o) {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return q.objects[out[i]].leasedAt().Before(q.objects[out[j]].leasedAt()) })
	return out
}

// refClosure lists every digest a ref keeps alive, optional trees included.
func (s *Server) refClosure(kind cache.Kind, ref string) ([]digest.Digest, error) {
	r, err := s.resolve(entry{kind: kind, ref: ref}, true)
	if err != nil {
		return nil, err
	}
	all, _, err := s.store.ClosureOf(r.roots)
	return all, err
}
