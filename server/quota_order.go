package server

import (
	"cmp"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/bst-cache/bst-cache/cache"
)

// The account keeps in order what an eviction pass takes, so that a pass
// costs what it looks at, not the store's size (a pass holds the locks
// every lookup and index write waits on):
//   - loose objects (no ref needs them) in two heaps: those no lease holds
//     by last use (idle: the pass takes them least recently used first),
//     those a lease holds by when it ends at the latest (held: a pass
//     first moves those whose leases ran out to idle). Leases end by time
//     with no event, so the held heap is what learns it; a lease ending
//     early (an upload lease trimmed, a read lease ended) moves its object
//     at once, and one renewed keeps its place until the end it had (then
//     ripen finds it still held and moves it on), so that a client asking
//     again and again about a loose blob costs no move each time. An
//     object's heap and place are in object.at.
//   - objects refs need, for health (writable): those a lease holds in a
//     third heap by when it ends at the latest (kept), ripened the same
//     way into a count of those no lease holds (bare). An object of bare
//     is one a pass can free by letting go of the refs that need it.
//   - refs in a list by last use, oldest first (the records' older and
//     newer, record 0 the list's ends). A use moves a ref to the newest
//     end, with the refs sharing its closure (an artifact's strong and
//     weak key, found by the start-up walk or written one after the
//     other: the sib ring): they are evicted together anyway, at the
//     latest use of any of them, so none waits at the oldest end, freeing
//     nothing, for every pass to look at again.
//
// Before the account is known (the start-up walk sets last uses from file
// times, in no order) nothing is kept in order: know puts everything in
// order once, the refs sorted while lookups go on (useOrder).
//
// A pass lets go of no ref when nothing refs need is free of leases
// (bare is empty). One that let go of every ref and still could not reach
// its target remembers it (stuck): until a lease on what kept them ends
// or something else may free more (gen), letting go of the refs again
// would free nothing (every object they need would be needed by none, and
// each was leased), and passes skip them. An upload waiting for room
// wakes when the next lease ends (nextEnd).

// objHeap is a heap of objects by key, earliest first.
type objHeap struct {
	e   []heapEntry
	bit uint32 // which heap: object.at says which it is in
}

type heapEntry struct {
	key stamp
	obj uint32
}

// at encodes an object's place in the order: 0 none, bareAt counted in
// bare, else its index+1 in a heap, with heldBit for the held heap and
// keptBit for the kept one.
const (
	heldBit  = 1 << 31
	keptBit  = 1 << 30
	heapBits = heldBit | keptBit
	bareAt   = math.MaxUint32
)

func (h *objHeap) less(a, b int) bool {
	x, y := h.e[a], h.e[b]
	return x.key < y.key || x.key == y.key && x.obj < y.obj
}

func (h *objHeap) swap(objs []object, a, b int) {
	h.e[a], h.e[b] = h.e[b], h.e[a]
	h.mark(objs, a)
	h.mark(objs, b)
}

func (h *objHeap) mark(objs []object, i int) {
	objs[h.e[i].obj].at = uint32(i+1) | h.bit
}

func (h *objHeap) up(objs []object, i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			return
		}
		h.swap(objs, i, p)
		i = p
	}
}

func (h *objHeap) down(objs []object, i int) {
	for {
		c := 2*i + 1
		if c >= len(h.e) {
			return
		}
		if c+1 < len(h.e) && h.less(c+1, c) {
			c++
		}
		if !h.less(c, i) {
			return
		}
		h.swap(objs, i, c)
		i = c
	}
}

// set puts object i in the heap with key, or moves it to key.
func (h *objHeap) set(objs []object, i uint32, key stamp) {
	at := int(objs[i].at&^heapBits) - 1
	if at < 0 {
		h.e = append(h.e, heapEntry{key, i})
		at = len(h.e) - 1
		h.mark(objs, at)
	} else {
		h.e[at].key = key
		h.down(objs, at)
	}
	h.up(objs, at)
}

// remove takes the object at index at out of the heap.
func (h *objHeap) remove(objs []object, at int) {
	objs[h.e[at].obj].at = 0
	last := len(h.e) - 1
	if at != last {
		h.e[at] = h.e[last]
		h.mark(objs, at)
	}
	h.e = h.e[:last]
	if at != last {
		h.down(objs, at)
		h.up(objs, at)
	}
}

// heapOf is the heap object i is in (nil: none), and its index there.
func (q *quota) heapOf(i uint32) (*objHeap, int) {
	at := q.objs[i].at
	var h *objHeap
	switch {
	case at == 0 || at == bareAt:
		return nil, 0
	case at&heldBit != 0:
		h = &q.held
	case at&keptBit != 0:
		h = &q.kept
	default:
		h = &q.idle
	}
	return h, int(at&^heapBits) - 1
}

// place puts object i where the order wants it now: nowhere if it is the
// empty blob (never evicted); while a ref needs it, in kept while a lease
// holds it, else in bare; else in held while a lease holds it, else in
// idle.
func (q *quota) place(i uint32, now stamp) {
	if !q.known {
		return
	}
	o := &q.objs[i]
	h, at := q.heapOf(i)
	var want *objHeap
	key := o.used
	bare := false
	switch {
	case o.size < 0 || o.hash == emptyKey:
	case o.leased(now):
		want, key = &q.held, q.leaseEnd(o, now)
		if o.needs > 0 {
			want = &q.kept
		}
	case o.needs > 0:
		bare = true
	default:
		want = &q.idle
	}
	if h != nil && h == want && h != &q.idle && key >= h.e[at].key {
		return // a lease renewed: ripen looks again at the end it had
	}
	if o.at == bareAt && !bare {
		o.at = 0
		q.bare--
	}
	if h != nil && h != want {
		h.remove(q.objs, at)
	}
	if bare && o.at != bareAt {
		o.at = bareAt
		q.bare++
	}
	if want != nil {
		want.set(q.objs, i, key)
	}
}

// leaseEnd is when o's leases end at the latest, after now. A read lease
// started at o's last use at the latest: it ends a read lease after it.
func (q *quota) leaseEnd(o *object, now stamp) stamp {
	end := max(o.upload, o.told, now+1)
	if o.lent > 0 {
		end = max(end, o.used+q.span(q.readLease))
	}
	return end
}

// ripen moves the objects of h (held or kept) whose leases ran out by now
// where they go now (idle, bare).
func (q *quota) ripen(h *objHeap, now stamp) {
	for len(h.e) > 0 && h.e[0].key <= now {
		q.looked++
		i := h.e[0].obj
		if o := &q.objs[i]; o.leased(now) { // renewed: until its new end
			h.set(q.objs, i, q.leaseEnd(o, now))
			continue
		}
		q.place(i, now)
	}
}

// evictable says whether a pass at now can free an object: one no lease
// holds, no ref needing it (idle) or refs needing it (bare: letting go of
// them frees it). The leases that ran out are taken out first.
func (q *quota) evictable(now stamp) bool {
	for _, c := range q.owners {
		q.expire(c, now)
	}
	q.ripen(&q.held, now)
	q.ripen(&q.kept, now)
	return len(q.idle.e) > 0 || q.bare > 0
}

// freed notes that a pass that let go of every ref may free more now: a
// ref was written (what it names may be held by nothing else), or a read
// lease ended early on an object refs need, which nothing else holds.
// (Objects no ref needs are ordered apart; time ending leases is in
// stuck.until.)
func (q *quota) freed() { q.gen++ }

// stuck remembers a pass that let go of every ref and was still over its
// target: until gen moves or a lease on what kept the refs ends (until),
// letting go of them again frees nothing.
type stuck struct {
	gen   uint64
	until stamp
	set   bool
}

func (q *quota) isStuck(now stamp) bool {
	return q.stuckAt.set && q.stuckAt.gen == q.gen && now < q.stuckAt.until
}

// nextEnd is when a lease that keeps something from eviction ends next
// after now (math.MaxInt32: none known): a loose object's, a read
// lease's, or one on an object that kept a pass from freeing more. Those
// that ran out by now are taken out first.
func (q *quota) nextEnd(now stamp) stamp {
	q.ripen(&q.held, now)
	next := stamp(math.MaxInt32)
	if len(q.held.e) > 0 {
		next = q.held.e[0].key
	}
	if q.isStuck(now) {
		next = min(next, q.stuckAt.until)
	}
	for _, c := range q.owners {
		q.expire(c, now)
		if len(c.lends) > 0 {
			next = min(next, c.lends[0].until)
		}
	}
	return next
}

// time is stamp n as a time.
func (q *quota) time(n stamp) time.Time {
	return q.epoch.Add(time.Duration(n) * time.Second / stampsPerSecond)
}

// maxSiblings bounds the refs sharing a closure that move together.
const maxSiblings = 4

// link puts ref record r at the newest end of the list.
func (q *quota) link(r uint32) {
	last := q.recs[0].older
	q.recs[r].older, q.recs[r].newer = last, 0
	q.recs[last].newer = r
	q.recs[0].older = r
}

// unlink takes ref record r out of the list, if it is in it.
func (q *quota) unlink(r uint32) {
	rec := &q.recs[r]
	if q.recs[rec.older].newer != r {
		return // not linked
	}
	q.recs[rec.older].newer = rec.newer
	q.recs[rec.newer].older = rec.older
	rec.older, rec.newer = 0, 0
}

// touch marks ref record r used at used, with the refs sharing its
// closure: they move to the newest end.
func (q *quota) touch(r uint32, used int64) {
	for s := r; ; {
		q.recs[s].used = used
		if !q.known && q.late != nil {
			q.late = append(q.late, s) // useOrder is sorting
		}
		if q.known {
			q.unlink(s)
			q.link(s)
		}
		if s = q.recs[s].sib; s == r {
			return
		}
	}
}

// join makes ref record r share sibling's closure and ring, if the ring
// has room.
func (q *quota) join(r, sibling uint32) {
	n := 1
	for s := q.recs[sibling].sib; s != sibling; s = q.recs[s].sib {
		n++
	}
	if n >= maxSiblings {
		return
	}
	q.recs[r].closure = q.recs[sibling].closure
	q.recs[r].sib, q.recs[sibling].sib = q.recs[sibling].sib, r
}

// leaveRing takes ref record r out of its ring.
func (q *quota) leaveRing(r uint32) {
	s := r
	for q.recs[s].sib != r {
		s = q.recs[s].sib
	}
	q.recs[s].sib = q.recs[r].sib
	q.recs[r].sib = r
}

// newRecord is a free ref record for k.
func (q *quota) newRecord(k refKey) uint32 {
	var r uint32
	if n := len(q.freeRecs); n > 0 {
		r = q.freeRecs[n-1]
		q.freeRecs = q.freeRecs[:n-1]
	} else {
		r = uint32(len(q.recs))
		q.recs = append(q.recs, refRecord{})
	}
	q.recs[r] = refRecord{ref: k.ref, kind: uint8(slices.Index(cache.Kinds, k.kind)), sib: r}
	q.refs[k] = r
	return r
}

// dropRecord forgets ref record r.
func (q *quota) dropRecord(r uint32) {
	q.unlink(r)
	q.leaveRing(r)
	delete(q.refs, q.recs[r].key())
	q.recs[r] = refRecord{}
	q.freeRecs = append(q.freeRecs, r)
}

// refUse is a ref's last use, to put refs in order.
type refUse struct {
	at  int64
	key refKey
	rec uint32
}

// compareUses orders uses by time, then by name.
func compareUses(a, b refUse) int {
	if a.at != b.at {
		return cmp.Compare(a.at, b.at)
	}
	return cmp.Or(strings.Compare(string(a.key.kind), string(b.key.kind)), strings.Compare(a.key.ref, b.key.ref))
}

// useOrder is every ref by last use, refs sharing a closure at the latest
// use of any of them, for know. It is sorted while lookups go on: the
// refs used or written meanwhile are noted (late), and know puts them in
// their new places.
func (q *quota) useOrder() []refUse {
	q.mu.Lock()
	order := make([]refUse, 0, len(q.refs))
	for _, r := range q.refs {
		for s := q.recs[r].sib; s != r; s = q.recs[s].sib {
			q.recs[r].used = max(q.recs[r].used, q.recs[s].used)
		}
		order = append(order, refUse{q.recs[r].used, q.recs[r].key(), r})
	}
	q.late = []uint32{}
	q.mu.Unlock()
	slices.SortFunc(order, compareUses)
	return order
}

// know enforces the quota from now on: the account is complete, and is
// put in order (see above) once, the refs in order (useOrder's, with the
// refs used since in their new places).
func (q *quota) know(now time.Time, order []refUse) {
	q.known = true
	q.pending = nil
	n := q.at(now)
	for i := range q.objs {
		q.place(uint32(i), n)
	}
	moved := make(map[uint32]bool, len(q.late))
	var late []refUse
	for _, r := range q.late {
		if !moved[r] {
			moved[r] = true
			late = append(late, refUse{q.recs[r].used, q.recs[r].key(), r})
		}
	}
	q.late = nil
	slices.SortFunc(late, compareUses)
	q.recs[0].older, q.recs[0].newer = 0, 0
	for len(order) > 0 || len(late) > 0 {
		if len(order) > 0 && moved[order[0].rec] {
			order = order[1:]
		} else if len(late) == 0 || len(order) > 0 && compareUses(order[0], late[0]) <= 0 {
			q.link(order[0].rec)
			order = order[1:]
		} else {
			q.link(late[0].rec)
			late = late[1:]
		}
	}
}

// sameSlice says whether a and b are one slice.
func sameSlice(a, b []uint32) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// emptyKey is the empty blob's hash: it is never evicted.
var emptyKey, _ = key(emptyDigest)
