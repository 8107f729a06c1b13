package server

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
)

// looseGrace protects blobs that no ref names yet: a client uploads blobs
// first and names them in a ref last.
const looseGrace = 10 * time.Minute

// quota keeps the store's objects under a size limit by evicting the least
// recently used refs, then the objects no remaining ref needs.
type quota struct {
	s     *Server
	limit int64
	used  atomic.Int64 // bytes of objects, approximately between scans
	kick  chan struct{}
	quit  chan struct{}
	wg    sync.WaitGroup
}

func newQuota(s *Server, limit int64) (*quota, error) {
	q := &quota{s: s, limit: limit, kick: make(chan struct{}, 1), quit: make(chan struct{})}
	var total int64
	if err := s.store.WalkObjects(func(o cache.ObjectInfo) error {
		total += o.Digest.Size
		return nil
	}); err != nil {
		return nil, fmt.Errorf("measuring the store: %w", err)
	}
	q.used.Store(total)
	q.wg.Add(1)
	go q.loop()
	if total > limit {
		q.kick <- struct{}{}
	}
	return q, nil
}

// add accounts for n new bytes and starts an eviction when over the limit.
func (q *quota) add(n int64) {
	if q.used.Add(n) > q.limit {
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
				q.s.logf("quota: evicted %d refs, freed %d bytes; %d of %d bytes used", n, freed, q.used.Load(), q.limit)
			}
		}
	}
}

// candidate is a ref or an unreferenced object, by last use.
type candidate struct {
	used    time.Time
	kind    cache.Kind // empty for a loose object
	ref     string
	object  digest.Digest
	closure []digest.Digest
}

// evict brings the store down to 90% of the limit. Whole refs go first,
// least recently used first; an object goes only once no ref left needs
// it. Index writes wait meanwhile, so a ref being pushed is never left
// without its blobs.
func (q *quota) evict(now time.Time) (refs int, freed int64, err error) {
	s := q.s
	s.refsMu.Lock()
	defer s.refsMu.Unlock()
	objects := map[digest.Digest]time.Time{}
	var total int64
	if err := s.store.WalkObjects(func(o cache.ObjectInfo) error {
		objects[o.Digest] = o.Modified
		total += o.Digest.Size
		return nil
	}); err != nil {
		return 0, 0, err
	}
	q.used.Store(total)
	if total <= q.limit {
		return 0, 0, nil
	}
	needed := map[digest.Digest]int{}
	var cands []candidate
	for _, kind := range cache.Kinds {
		infos, err := s.store.ListRefs(kind, "")
		if err != nil {
			return 0, 0, err
		}
		for _, info := range infos {
			closure, err := s.refClosure(kind, info.Name)
			if err != nil {
				s.logf("quota: %s ref %s is unreadable, left alone: %v", kind, info.Name, err)
				continue
			}
			for _, d := range closure {
				needed[d]++
			}
			cands = append(cands, candidate{used: info.Accessed, kind: kind, ref: info.Name, closure: closure})
		}
	}
	empty := digest.NewFromBlob(nil)
	for d, mtime := range objects {
		if needed[d] == 0 && d != empty && now.Sub(mtime) > looseGrace {
			cands = append(cands, candidate{used: mtime, object: d})
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].used.Before(cands[j].used) })
	target := q.limit / 10 * 9
	remove := func(d digest.Digest) {
		if _, ok := objects[d]; !ok || d == empty {
			return
		}
		if err := s.store.RemoveObject(d); err != nil {
			s.logf("quota: removing %s: %v", d, err)
			return
		}
		delete(objects, d)
		total -= d.Size
		freed += d.Size
	}
	for _, c := range cands {
		if total <= target {
			break
		}
		if c.kind == "" {
			remove(c.object)
			continue
		}
		if err := s.store.DeleteRef(c.kind, c.ref); err != nil && !errors.Is(err, cache.ErrNotFound) {
			s.logf("quota: removing %s ref %s: %v", c.kind, c.ref, err)
			continue
		}
		refs++
		for _, d := range c.closure {
			if needed[d]--; needed[d] == 0 {
				remove(d)
			}
		}
	}
	q.used.Store(total)
	if total > q.limit {
		s.logf("quota: still %d bytes over the limit of %d: the rest is new uploads not yet named by a ref", total-q.limit, q.limit)
	}
	return refs, freed, nil
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
