package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
)

// DefaultLease is how long a blob reported present (FindMissingBlobs) or
// just uploaded is kept from eviction: long enough for a client to upload
// the rest and write the ref that names it.
const DefaultLease = 10 * time.Minute

// DefaultReadLease is how long the closure of a ref a client was just
// given (GetReference, Fetch) or a blob it reads is kept from eviction:
// long enough to read it.
const DefaultReadLease = 2 * time.Minute

// quota keeps the store's objects under a size limit. It keeps its own
// account of every object (size, last use, leases, how many refs need it)
// and every ref (its closure, last use), kept up to date as blobs and refs
// are written and read, so an eviction pass plans in memory instead of
// walking the store.
//
// The account is built in the background at start-up (one walk of the
// objects, then each ref's closure, measureReaders refs read at once): the
// server serves at once, and the quota is enforced (eviction, admission)
// once the account is known.
// Writes and reads during the walk update the account as they happen; the
// walk only adds what is not there yet (an object a live write already
// accounted keeps its live times, a ref written during the walk keeps its
// new closure, and the use of a ref the walk has not reached yet is kept
// aside and applied when it does), and nothing is evicted before the walk
// ends, so walk and live updates commute and the account ends right.
//
// The account is compact (well under 200 bytes an object or ref): objects
// live in one slice, found by their binary hash through a flat table
// (objectSlots: a lookup reads a cache line or two); times are eighths of a
// second since the account's start in 32 bits (a ref's last use, in the
// room its record has, in nanoseconds); a ref's closure is the
// slice indexes of its objects, shared by the refs the walk finds naming
// the same roots.
//
// Leases keep objects from eviction while clients need them:
//   - upload: an object just uploaded, for the lease (DefaultLease), so its
//     client can upload the rest and name it; the ref that names it ends
//     this lease (from then on the ref keeps it).
//   - told: an object FindMissingBlobs reported present (or uploaded again)
//     runs for the lease too, and only time ends it: the client told may
//     be about to name it in a ref of its own.
//   - read: the closure of a ref GetReference or Fetch just answered, and a
//     blob read, for the read lease (DefaultReadLease): a client given a
//     ref finds every blob of it while it reads them.
//
// Leases are bounded per client, a client being its connection (a gRPC
// client keeps one). Upload leases on objects no ref names (loose:
// abandoned pushes, or clients that upload and never name) hold at most
// half the quota, all clients together: past it, a client that left
// something unnamed loses its oldest first, the one that left the most
// first, unnamed being what it uploaded over its connection that no ref
// has named since, leases it lost included; only when none holds a lease
// do the others (pushes in progress) lose theirs, in the same order.
// Read leases hold at most a quarter of the quota, the client holding the
// most losing its oldest first. The lease just taken is kept. So one
// client's leases cannot starve another's: a client that uploads and never
// names piles up what it left unnamed and loses its leases first, however
// little it holds at a time, while a push, whose ref names what it
// uploaded, keeps its own.
//
// Eviction, down to 90% of the limit: first objects no ref needs whose
// leases ran out, least recently used first; then whole refs, least
// recently used first, with the objects no remaining ref needs unless a
// lease holds them (a ref that would free nothing now stays, while refs
// that free blobs together, as an artifact's strong and weak key do, go
// together). A leased object is never removed: a push does not lose what
// it uploaded before it names it, nor a pull the blobs of the ref it was
// given. The plan is made while index writes and lookups wait; the refs'
// files are deleted after, without holding them (lookups and listings take
// those refs as absent, a write of one keeps it), then their objects leave
// the account, and the objects' files go while an index write naming one
// of them finds it missing (see evictPass). The account keeps loose
// objects and refs in the order eviction takes them (see quota_order.go),
// so a pass plans looking at what it evicts (and at the refs before them
// that free nothing), not at the whole store, while lookups wait: one
// that finds nothing refs need free of leases looks at no ref, and one
// that let go of every ref without freeing enough is remembered, the
// passes after it looking at none until a lease ends or a ref is written.
//
// The store may pass its limit by what clients hold in leases, up to a
// hard cap (a twentieth of the limit past it). An upload is admitted
// against the account, the uploads admitted before it and not yet stored
// (their room reserved until then) and the files eviction is removing
// (waiting for them when they make the room), so uploads at once cannot
// together pass the cap, on disk either. Past it an upload first evicts to make room,
// then ends upload leases on unnamed objects, in the order above, below
// their bound too (loose uploads are the most expendable: a push names
// its blobs within seconds), and evicts again; then it waits for room a
// while (admitWait: uploads in progress end, pushes name theirs; less if
// its client gives up), and is refused with RESOURCE_EXHAUSTED only when
// the leases left leave none. A batch upload's blobs are admitted
// together, as one reservation, and wait once (see putBatch). Uploads of
// clients that left blobs unnamed come last: they leave the room the
// others' waiting uploads need to them, and end only the leases of
// clients that left blobs unnamed too. A client refused (a whole call, or
// the blobs of a batch) tries again after its retry-delay.
//
// bazel-remote and Buildbarn have no leases: bazel-remote evicts blobs by
// LRU as it writes, Buildbarn's local storage by FIFO over blocks, so a
// blob reported present may be gone before the client names it, and the
// clients' retries make up for it. BuildStream's refs name whole trees,
// so here a ref's closure is kept whole or evicted whole, and leases close
// the windows between FindMissingBlobs and the ref, and between the ref
// and its blobs being read.
type quota struct {
	s         *Server
	limit     int64
	lease     time.Duration
	readLease time.Duration
	// epoch is stamp 0: when the account was made.
	epoch time.Time
	kick  chan struct{}
	quit  chan struct{}
	wg    sync.WaitGroup
	// walked receives the end of the store's start-up walk, which feeds
	// the account its objects (object) as it feeds the object index.
	walked chan error

	mu sync.Mutex
	// known: the start-up walk is done and the quota is enforced.
	known bool
	objs  []object
	slots objectSlots // finds objs by hash
	free  []uint32    // places in objs removed, to reuse
	// refs are the refs' records in recs (record 0 ends their list by
	// last use: see quota_order.go), freeRecs those removed, to reuse.
	refs     map[refKey]uint32
	recs     []refRecord
	freeRecs []uint32
	// last is the record setRef wrote last: the next ref written with the
	// same closure shares it (an artifact's keys).
	last uint32
	used int64 // bytes of objects
	// idle and held order the loose objects, kept and bare the leased and
	// unleased ones refs need (see quota_order.go); gen moves when a hold
	// on an object drops early, stuckAt is the last pass that could free
	// no more.
	idle, held, kept objHeap
	bare             int
	gen              uint64
	stuckAt          stuck
	// late notes the refs used while useOrder sorts them.
	late []uint32
	// passMu lets one eviction pass run at a time.
	passMu sync.Mutex
	// going holds the ref records an eviction pass is to delete (see
	// evictPass), true while their files are removed; refGone signals
	// that one's file is gone. deleting is set while it may hold any, so
	// that lookups and listings take no lock to find it empty.
	going    map[uint32]bool
	refGone  *sync.Cond
	deleting atomic.Bool
	// removing holds the objects an eviction pass took out of the account
	// whose files it has not removed yet.
	removing map[[32]byte]struct{}
	// unlinking is the bytes of those.
	unlinking int64
	// changed signals what may make room for an upload waiting for it: a
	// file removed, an upload stored or failed, a ref written.
	changed *sync.Cond
	// pending keeps the uses of refs the start-up walk has not reached.
	pending map[refKey]int64
	// clients hold upload leases on loose objects and read leases, by
	// connection and by id.
	clients map[string]*client
	owners  map[uint32]*client
	lastID  uint32
	loose   int64 // bytes of loose objects under an upload lease
	// reserved is the bytes of uploads admitted and not yet stored.
	reserved int64
	// waiting is the bytes of uploads waiting for room, waitingFirst
	// those of clients that left nothing unnamed: room kept for them
	// (see admit).
	waiting, waitingFirst int64
	// lost remembers, for objects evicted while counted in a client's
	// unnamed total, that client (and when, in lostOrder, oldest first):
	// a push sending such a blob again counts it once. At most maxLost.
	lost      map[[32]byte]lostBy
	lostOrder []lostEntry
	lostSeq   uint64
	lent      int64 // bytes under read leases (counted once a lease)
	// evicted counts what eviction removed, for Stats.
	evicted struct{ refs, objects, bytes int64 }
	// looked counts the refs and objects eviction passes (and writable)
	// looked at: a pass costs what it evicts, not the store's size.
	looked int64
}

// stamp is a time in the account: eighths of a second since its epoch.
type stamp int32

const stampsPerSecond = 8

// at is t as a stamp, clamped to what a stamp holds.
func (q *quota) at(t time.Time) stamp {
	return clampStamp(t.Sub(q.epoch) * stampsPerSecond / time.Second)
}

// until is when a lease of d taken now ends: at least d from now.
func (q *quota) until(now time.Time, d time.Duration) stamp {
	return clampStamp(time.Duration(q.at(now)) + time.Duration(q.span(d)))
}

// span is how many stamps a lease of d takes from the stamp it starts at.
func (q *quota) span(d time.Duration) stamp {
	return clampStamp((d*stampsPerSecond+time.Second-1)/time.Second + 1)
}

func clampStamp(n time.Duration) stamp {
	return stamp(max(min(n, math.MaxInt32), math.MinInt32+1))
}

// object is one stored blob.
type object struct {
	hash [32]byte
	size int64 // -1: a free slot
	// used is when it was last written, reported present or read: loose
	// objects are evicted least recently used first.
	used stamp
	// upload is when its upload lease ends; a ref naming it ends it.
	upload stamp
	// told is when its told lease ends: only time ends it.
	told  stamp
	needs int32 // refs that need it
	// owner is the client whose loose share its upload lease counts in
	// (0: none).
	owner uint32
	// left is the client whose unnamed total counts it (0: none): the
	// last to upload it while no ref needed it, until a ref names it. It
	// outlives the upload lease: a lease lost still counts as left.
	left uint32
	lent int32 // read leases on it
	// at is its place in the order of loose objects (see
	// quota_order.go).
	at uint32
}

func (o *object) leased(now stamp) bool { return o.upload > now || o.told > now || o.lent > 0 }

type refKey struct {
	kind cache.Kind
	ref  string
}

type refRecord struct {
	ref     string
	closure []uint32 // indexes in objs; shared, never changed in place
	// used is when it was last written or read, in Unix nanoseconds: the
	// start-up walk's file times put refs in order once (see know); then
	// each use moves its ref to the newest end of the list.
	used int64
	// older and newer link the refs by last use, sib the refs sharing
	// its closure (see quota_order.go).
	older, newer, sib uint32
	kind              uint8 // in cache.Kinds
}

// key is the record's ref.
func (r *refRecord) key() refKey { return refKey{cache.Kinds[r.kind], r.ref} }

// client is one connection holding upload leases on loose objects or
// read leases.
type client struct {
	id    uint32
	name  string
	bytes int64 // of loose objects it holds an upload lease on
	held  int   // how many
	// unnamed is what it left loose: bytes it uploaded that no ref named
	// since, leases it lost included; a ref naming them takes them off.
	unnamed int64
	// seen is when it last uploaded. A client holding no lease is
	// forgotten once it left nothing unnamed, or was not seen for a lease.
	seen stamp
	// queue lists its uploads, oldest first; entries whose object it no
	// longer holds, or holds by a later upload, are skipped.
	queue []queued
	// lends are its read leases, oldest first, and lent their bytes.
	lends []lend
	lent  int64
}

// lend is a read lease on objects (a ref's closure, or a blob read).
type lend struct {
	objs  []uint32
	until stamp
	bytes int64
}

type queued struct {
	obj   uint32
	until stamp
}

// lostBy is the client whose unnamed total counts an evicted object, and
// the entry of lostOrder that remembers it.
type lostBy struct {
	client uint32
	seq    uint64
}

type lostEntry struct {
	hash [32]byte
	seq  uint64
}

// maxLost bounds what the account remembers of evicted objects clients
// left unnamed (about 100 bytes each): the oldest are forgotten first,
// and a blob sent again after that counts again.
const maxLost = 1 << 15

func newQuota(s *Server, limit int64, lease, readLease time.Duration) *quota {
	q := newAccount()
	q.s, q.limit, q.lease, q.readLease = s, limit, lease, readLease
	q.wg.Add(2)
	go q.build()
	go q.loop()
	return q
}

// newAccount is an empty account, its epoch now.
func newAccount() *quota {
	q := &quota{epoch: time.Now(), kick: make(chan struct{}, 1), quit: make(chan struct{}), walked: make(chan error, 1),
		slots: newObjectSlots(), going: map[uint32]bool{}, removing: map[[32]byte]struct{}{}, lost: map[[32]byte]lostBy{}, refs: map[refKey]uint32{}, recs: make([]refRecord, 1), pending: map[refKey]int64{},
		clients: map[string]*client{}, owners: map[uint32]*client{}, held: objHeap{bit: heldBit}, kept: objHeap{bit: keptBit}}
	q.changed = sync.NewCond(&q.mu)
	q.refGone = sync.NewCond(&q.mu)
	return q
}

// errStopped ends the start-up walk when the server stops.
var errStopped = errors.New("the server is stopping")

// build measures the store and enforces the quota from then on.
func (q *quota) build() {
	defer q.wg.Done()
	start := time.Now()
	if err := q.measure(measureReaders); err != nil {
		if !errors.Is(err, errStopped) {
			q.s.logf("quota: measuring the store failed, the quota is not enforced: %v", err)
		}
		return
	}
	order := q.useOrder()
	q.mu.Lock()
	q.know(time.Now(), order)
	objects, refs, used := len(q.objs)-len(q.free), len(q.refs), q.used
	q.mu.Unlock()
	q.s.logf("quota: store measured in %s: %d objects, %d bytes (%d%% of the quota), %d refs; the quota of %d bytes is enforced",
		time.Since(start).Round(time.Millisecond), objects, used, used*100/q.limit, refs, q.limit)
	q.kickIfOver()
}

// measureReaders is how many refs measure reads at once. Each ref is a
// few small dependent reads (the ref, then its Directories level by
// level): one at a time, a cold store's disk has one request in flight.
// More readers cost more processor (each blocking read parks a thread:
// 16 took 1.6 times the processor of one, and no less time, at 200,000
// refs on a 2-core machine).
const measureReaders = 4

// measure adds every ref's closure to the account, once the store's walk
// (object) has added every object, reading refs readers at a time: the
// walk hands each ref to a reader (it waits while readers are busy, so
// what is read ahead is the refs being read), which resolves it, reads
// its closure and applies it to the account under q.mu. Applying is
// exact whatever the order readers end in: refs naming the same roots
// share the closure applied first (two readers may read it at once, it is
// applied once), a ref written since keeps its closure, and the use of a
// ref kept aside (pending) is applied with it. Directories are read
// without being hashed again: a corrupt one is found when it is served,
// and the account only needs to know what refs name. An unreadable ref is
// logged and left alone. Once q.quit closes, no read starts and nothing
// more is applied; measure returns once the reads under way end.
func (q *quota) measure(readers int) error {
	select {
	case err := <-q.walked:
		if err != nil {
			return err
		}
	case <-q.quit:
		return errStopped
	}
	// closures are the closures applied, by their roots: refs naming the
	// same roots (a strong and a weak key) share one, read once. Guarded
	// by q.mu.
	closures := map[[32]byte]walked{}
	var g errgroup.Group
	g.SetLimit(readers)
	// The refs are walked, not listed: a list of a big store's refs
	// (a name and a RefInfo each, ~170 bytes) would outweigh the account.
	// The walk reads directories only; each ref's file is for its reader.
	var err error
	for _, kind := range cache.Kinds {
		c := q.s.store.Refs(kind, "", "")
		for !q.stopped() && c.Next() {
			k := refKey{c.Kind(), c.Name()}
			g.Go(func() error {
				q.measureRef(k, closures)
				return nil
			})
		}
		if err = c.Err(); err != nil {
			break
		}
	}
	g.Wait()
	if err == nil && q.stopped() {
		err = errStopped
	}
	return err
}

// walked is a closure measure read, and the first ref it applied it to
// that still has it.
type walked struct {
	closure []uint32
	first   refKey
}

// measureRef reads ref k's closure, unless one of the same roots was
// applied, and applies it to the account (see measure).
func (q *quota) measureRef(k refKey, closures map[[32]byte]walked) {
	if q.stopped() {
		return
	}
	// Its last use first: reading it moves its access time.
	info, err := q.s.store.RefInfo(k.kind, k.ref)
	if errors.Is(err, cache.ErrNotFound) {
		return // deleted since the walk listed it
	}
	var r resolved
	if err == nil {
		r, err = q.s.resolve(entry{kind: k.kind, ref: k.ref}, true)
	}
	var reach []digest.Digest
	var roots [32]byte
	if err == nil {
		roots = rootsKey(r.roots)
		q.mu.Lock()
		_, read := closures[roots]
		q.mu.Unlock()
		if !read {
			reach, err = q.s.store.Reach(r.roots)
		}
	}
	if err != nil {
		q.s.logf("quota: %s ref %s is unreadable, left alone: %v", k.kind, k.ref, err)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped() {
		return
	}
	w, ok := closures[roots]
	if !ok {
		w = walked{closure: q.indexes(reach, false)}
	}
	if _, written := q.refs[k]; !written { // else written since: that closure holds
		at := q.setRecord(k, w.closure, max(info.Accessed.UnixNano(), q.pending[k]), 0)
		if f, ok := q.refs[w.first]; ok && f != at && sameSlice(q.recs[f].closure, w.closure) {
			q.join(at, f)
		} else {
			w.first = k // the first, or the first ref was written since
		}
	}
	closures[roots] = w
}

// stopped says whether the server is stopping.
func (q *quota) stopped() bool {
	select {
	case <-q.quit:
		return true
	default:
		return false
	}
}

// object adds an object the store's start-up walk found.
func (q *quota) object(o cache.ObjectInfo) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.find(o.Digest); !ok {
		i := q.add(o.Digest)
		q.objs[i].used = q.at(o.Modified)
		q.objs[i].told = q.until(o.Modified, q.lease)
	}
}

// rootsKey names a set of roots in 32 bytes (a SHA-256 of their hashes):
// measure keeps one a closure for the whole walk.
func rootsKey(r cache.Roots) [32]byte {
	h := sha256.New()
	for _, d := range r.Dirs {
		io.WriteString(h, d.Hash)
	}
	h.Write([]byte{'/'})
	for _, d := range r.Blobs {
		io.WriteString(h, d.Hash)
	}
	return [32]byte(h.Sum(nil))
}

// key is a digest's hash in binary; ok is false unless it is 64
// lowercase hex digits, as the store's names are.
func key(d digest.Digest) (k [32]byte, ok bool) { return cache.HashBytes(d.Hash) }

// find is the slot of the object d.
func (q *quota) find(d digest.Digest) (uint32, bool) {
	k, ok := key(d)
	if !ok {
		return 0, false
	}
	return q.slots.find(q.objs, &k)
}

// add accounts for a new object, unleased; its digest is valid.
func (q *quota) add(d digest.Digest) uint32 {
	k, _ := key(d)
	o := object{hash: k, size: d.Size}
	var i uint32
	if n := len(q.free); n > 0 {
		i = q.free[n-1]
		q.free = q.free[:n-1]
		q.objs[i] = o
	} else {
		i = uint32(len(q.objs))
		q.objs = append(q.objs, o)
	}
	q.slots.put(&k, i)
	q.used += d.Size
	return i
}

// drop forgets a removed object.
func (q *quota) drop(i uint32) {
	if h, at := q.heapOf(i); h != nil {
		h.remove(q.objs, at)
	}
	q.disown(i)
	o := &q.objs[i]
	if q.owners[o.left] != nil {
		q.lose(o.hash, o.left)
	}
	q.slots.remove(&o.hash, i)
	q.used -= o.size
	*o = object{size: -1}
	q.free = append(q.free, i)
}

// indexes are the slots of ds. Before the account is known, an object
// not accounted yet is added (it is in the store: the caller found it
// there, and the walk has not reached it yet); after, it is left out.
func (q *quota) indexes(ds []digest.Digest, live bool) []uint32 {
	out := make([]uint32, 0, len(ds))
	for _, d := range ds {
		i, ok := q.find(d)
		if !ok && live && !q.known {
			i, ok = q.add(d), true
		}
		if ok {
			out = append(out, i)
		}
	}
	return out
}

// stored accounts for an object written by who (a client's connection;
// "" for the server's own fills), leased from now. A loose object counts
// against who, and past the bound on loose uploads the client holding the
// most loses its oldest lease (see quota).
func (q *quota) stored(d digest.Digest, who string, now time.Time) {
	q.mu.Lock()
	i, ok := q.find(d)
	if !ok {
		i = q.add(d)
	}
	q.disown(i) // a new upload: whatever share held it before, this one does
	o := &q.objs[i]
	o.used = q.at(now)
	o.upload = q.until(now, q.lease)
	q.place(i, o.used)
	if o.needs == 0 && who != "" {
		c := q.client(who)
		c.seen = o.used
		q.own(i, c)
		for q.loose > q.limit/2 {
			b := q.biggest(q.at(now), func(b *client) bool { return b.held > 0 && (b != c || b.held > 1) }, leftUnnamed)
			if b == nil {
				break
			}
			if _, ok := q.dropOldest(b, q.at(now)); !ok {
				break
			}
		}
	}
	q.mu.Unlock()
	q.kickIfOver()
}

// leftUnnamed orders the clients whose upload leases go first: those that
// left something unnamed (lost or let run out a lease on a blob no ref of
// theirs named since: loose writers), then the others (pushes in
// progress), each by what they left unnamed, most first.
func leftUnnamed(c *client) int64 {
	if leftSome(c) {
		return c.unnamed + 1<<48
	}
	return c.unnamed
}

// leftSome says whether c left blobs unnamed: it lost, or let run out, an
// upload lease on a blob no ref named since.
func leftSome(c *client) bool { return c.unnamed > c.bytes }

// client is the account of a connection's loose uploads.
func (q *quota) client(name string) *client {
	c := q.clients[name]
	if c == nil {
		q.lastID++
		c = &client{id: q.lastID, name: name}
		q.clients[name], q.owners[c.id] = c, c
	}
	return c
}

// own counts object i's upload lease in c's loose share, and the object
// in what c left unnamed (see leave).
func (q *quota) own(i uint32, c *client) {
	o := &q.objs[i]
	o.owner = c.id
	c.bytes += o.size
	c.held++
	q.loose += o.size
	c.queue = append(c.queue, queued{i, o.upload})
	q.leave(i, c)
}

// leave counts object i, which c just uploaded, in what c left unnamed,
// once: an object counts in one client's total at a time, the last
// uploader's, and one eviction removed while counted in a client's is
// taken out of that one's when it comes back. So a push sending again a
// blob it lost (see lose) counts it once, and the ref naming it takes it
// off.
func (q *quota) leave(i uint32, c *client) {
	o := &q.objs[i]
	if o.left == c.id {
		return
	}
	q.unleave(i)
	if l, ok := q.lost[o.hash]; ok {
		delete(q.lost, o.hash)
		if prev := q.owners[l.client]; prev != nil {
			prev.unnamed -= o.size
			q.forgetIdle(prev)
		}
	}
	o.left = c.id
	c.unnamed += o.size
}

// unleave takes object i out of what the client that left it unnamed
// left: a ref named it, or another client uploaded it since.
func (q *quota) unleave(i uint32) {
	o := &q.objs[i]
	if c := q.owners[o.left]; c != nil {
		c.unnamed -= o.size
		q.forgetIdle(c)
	}
	o.left = 0
}

// lose remembers that an object the client left unnamed was evicted: it
// still counts in that client's total (a lease lost counts as left), and
// is taken out of it when the object is uploaded again (see leave). Past
// maxLost, the oldest is forgotten.
func (q *quota) lose(h [32]byte, client uint32) {
	q.lostSeq++
	q.lost[h] = lostBy{client, q.lostSeq}
	q.lostOrder = append(q.lostOrder, lostEntry{h, q.lostSeq})
	for len(q.lostOrder) > maxLost {
		e := q.lostOrder[0]
		q.lostOrder = q.lostOrder[1:]
		if l := q.lost[e.hash]; l.seq == e.seq {
			delete(q.lost, e.hash)
		}
	}
}

// disown takes object i's upload lease out of its client's share.
func (q *quota) disown(i uint32) {
	o := &q.objs[i]
	c := q.owners[o.owner]
	o.owner = 0
	if c == nil {
		return
	}
	c.bytes -= o.size
	c.held--
	q.loose -= o.size
	if len(c.queue) > 2*c.held+16 {
		c.queue = slices.DeleteFunc(c.queue, func(e queued) bool { return !q.holds(c, e) })
	}
	q.forgetIdle(c)
}

// forgetIdle forgets a client that holds no lease and left nothing
// unnamed.
func (q *quota) forgetIdle(c *client) {
	if c.held == 0 && len(c.lends) == 0 && c.unnamed <= 0 {
		q.forget(c)
	}
}

func (q *quota) forget(c *client) {
	delete(q.clients, c.name)
	delete(q.owners, c.id)
}

// holds says whether a queue entry of c's is still an upload c holds.
func (q *quota) holds(c *client, e queued) bool {
	o := &q.objs[e.obj]
	return o.owner == c.id && o.upload == e.until
}

// dropOldest ends c's oldest upload lease on a loose object and says
// which; false when it holds none.
func (q *quota) dropOldest(c *client, now stamp) (uint32, bool) {
	for len(c.queue) > 0 {
		e := c.queue[0]
		c.queue = c.queue[1:]
		if q.holds(c, e) {
			q.objs[e.obj].upload = 0
			q.disown(e.obj)
			q.place(e.obj, now)
			return e.obj, true
		}
	}
	return 0, false
}

// biggest is the client for which size is largest among those that can
// yield a lease (not the one just taken), once the leases that ran out are
// taken out of every client's account.
func (q *quota) biggest(now stamp, canYield func(*client) bool, size func(*client) int64) *client {
	var top *client
	lease := stamp(q.lease * stampsPerSecond / time.Second)
	for _, c := range q.owners {
		q.expire(c, now)
		if c.held == 0 && len(c.lends) == 0 && now-c.seen > lease {
			q.forget(c) // what it left unnamed was long ago
			continue
		}
		if canYield(c) && (top == nil || size(c) > size(top)) {
			top = c
		}
	}
	return top
}

// expire ends c's leases that ran out.
func (q *quota) expire(c *client, now stamp) {
	for len(c.queue) > 0 && c.held > 0 && (!q.holds(c, c.queue[0]) || c.queue[0].until <= now) {
		e := c.queue[0]
		c.queue = c.queue[1:]
		if q.holds(c, e) {
			q.disown(e.obj) // ran out: evictable already
		}
	}
	for len(c.lends) > 0 && c.lends[0].until <= now {
		q.endLend(c, now)
	}
}

// use renews the told lease of objects: they were reported present or
// uploaded again. They are taken useBatch at a time under the account's
// lock: a FindMissingBlobs of thousands of digests takes it a few times,
// not once a digest, and holds it a short while each time.
//
// It says which of them are worth moving on disk (their modification
// time, which a restart's account starts from): those the account held no
// use of within persistEvery. A client asking about the same blobs again
// and again then costs no system call each time.
//
// The objects are found findChunk at a time (objectSlots.findAll), their
// reads overlapping, before any of them is renewed.
func (q *quota) use(ds []digest.Digest, now time.Time) (persist []digest.Digest) {
	until, n, stale := q.until(now, q.lease), q.at(now), q.at(q.epoch.Add(persistEvery))
	var keys [findChunk][32]byte
	var places [findChunk]uint32
	for len(ds) > 0 {
		batch := ds[:min(len(ds), useBatch)]
		ds = ds[len(batch):]
		q.mu.Lock()
		for len(batch) > 0 {
			chunk := batch[:min(len(batch), findChunk)]
			batch = batch[len(chunk):]
			for j, d := range chunk {
				keys[j], _ = key(d) // callers' digests are valid
			}
			q.slots.findAll(q.objs, keys[:len(chunk)], places[:])
			for j, d := range chunk {
				i, ok := places[j]-1, places[j] != 0
				if !ok && q.known {
					continue
				}
				if !ok {
					// The walk has not reached it; the batch may
					// have named it before.
					if i, ok = q.find(d); !ok {
						i = q.add(d)
					}
				}
				o := &q.objs[i]
				if !ok || n-o.used >= stale {
					persist = append(persist, d)
				}
				o.used, o.told = n, max(o.told, until)
				q.place(i, n)
			}
		}
		q.mu.Unlock()
	}
	return persist
}

// useBatch is how many objects use takes under one hold of the lock.
const useBatch = 1024

// persistEvery is how stale an object's last use on disk may be: a restart
// orders by it which unnamed objects go first, where a minute is nothing.
const persistEvery = time.Minute

// lend gives who (a client's connection) a read lease on objects: it was
// given a ref needing them, or reads them. Read leases are bounded (see
// quota): past the bound, the client holding the most loses its oldest.
func (q *quota) lend(ds []digest.Digest, who string, now time.Time) {
	n := q.at(now)
	q.mu.Lock()
	defer q.mu.Unlock()
	l := lend{objs: q.indexes(ds, true), until: q.until(now, q.readLease)}
	lent := who != "" && len(l.objs) > 0
	for _, i := range l.objs {
		q.objs[i].used = n
		if lent {
			q.objs[i].lent++
			l.bytes += q.objs[i].size
		}
		q.place(i, n)
	}
	if !lent {
		return
	}
	c := q.client(who)
	q.expire(c, n)
	c.lends = append(c.lends, l)
	c.lent += l.bytes
	q.lent += l.bytes
	for q.lent > q.limit/4 {
		b := q.biggest(n, func(b *client) bool { return len(b.lends) > 1 || len(b.lends) == 1 && b != c }, func(b *client) int64 { return b.lent })
		if b == nil {
			break
		}
		q.endLend(b, n)
	}
}

// endLend ends c's oldest read lease.
func (q *quota) endLend(c *client, now stamp) {
	l := c.lends[0]
	c.lends = c.lends[1:]
	q.release(l.objs, lent, now)
	c.lent -= l.bytes
	q.lent -= l.bytes
	q.forgetIdle(c)
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
	idx := q.indexes(closure, true)
	for _, i := range idx {
		q.unleave(i)
		q.objs[i].upload = 0
		q.disown(i)
	}
	r := q.setRecord(refKey{kind, ref}, idx, now.UnixNano(), q.at(now))
	if l := q.last; l != 0 && l != r && q.recs[l].ref != "" && slices.Equal(q.recs[l].closure, idx) {
		q.join(r, l)
	}
	q.last = r
	q.changed.Broadcast()
}

// setRecord records a ref's closure (each object once) and last use (the
// newest once the account is known), and says where.
func (q *quota) setRecord(k refKey, closure []uint32, used int64, now stamp) uint32 {
	for _, i := range closure {
		q.objs[i].needs++
		q.place(i, now)
	}
	q.freed() // what it names may be held by nothing else
	r, ok := q.refs[k]
	if ok {
		q.release(q.recs[r].closure, needs, now)
		q.unlink(r)
		q.leaveRing(r)
	} else {
		r = q.newRecord(k)
	}
	q.recs[r].closure = closure
	q.touch(r, used)
	return r
}

// useRef marks a ref as read now.
func (q *quota) useRef(kind cache.Kind, ref string, now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	k := refKey{kind, ref}
	if r, ok := q.refs[k]; ok {
		q.touch(r, now.UnixNano())
	} else if !q.known {
		q.pending[k] = now.UnixNano()
	}
}

// release counts one less of what count points at in each of objs.
func (q *quota) release(objs []uint32, count func(*object) *int32, now stamp) {
	for _, i := range objs {
		o := &q.objs[i]
		if n := count(o); *n > 0 {
			if *n--; *n == 0 {
				q.place(i, now)
				if o.needs > 0 && !o.leased(now) {
					q.freed() // a read lease was all that held it
				}
			}
		}
	}
}

// needs and lent point at an object's counts.
func needs(o *object) *int32 { return &o.needs }
func lent(o *object) *int32  { return &o.lent }

func (q *quota) kickIfOver() {
	q.mu.Lock()
	over := q.known && q.used > q.limit
	q.mu.Unlock()
	if over {
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
			q.evict(time.Now(), 0)
		}
	}
}

// evict makes room bytes under the limit, if there are not, and says
// what it did.
func (q *quota) evict(now time.Time, room int64) {
	refs, gone := q.evictPass(now, room)
	freed := q.removeFiles(gone)
	if refs > 0 || freed > 0 {
		q.mu.Lock()
		used := q.used
		q.mu.Unlock()
		q.s.logf("quota: evicted %d refs, freed %d bytes; %d of %d bytes used", refs, freed, used, q.limit)
	}
}

// evictPass brings the account down to 90% of the limit, less room, and
// further when the uploads admitted and not yet stored need it to stay
// under the hard cap (see quota), and says which objects to remove. One
// pass runs at a time, in three steps:
//   - plan, while index writes and lookups wait (refsMu): loose objects
//     leave the account at once, and the refs to evict are marked going;
//     nothing is deleted yet. From then on lookups and listings take a
//     ref going as absent (going), and an index write of one takes it
//     back (claim): the pass leaves it, and the objects it needs.
//   - delete the refs' files, holding neither lock while a file goes:
//     lookups and index writes go on. An index write of a ref whose file
//     is going waits for it, then writes it anew. A ref deleted leaves
//     the account, its objects needed by one ref less; one whose deletion
//     fails stays, and so do its objects.
//   - while index writes and lookups wait again, take out of the account
//     what the planned objects are still to go: those no ref needs now and
//     no lease holds (a ref written meanwhile may name one, a client may
//     have been told of it). So a ref goes before any object it names.
//
// The objects out of the account are named in removing until their files
// are gone (removeFiles): they are removed once neither lock is held, and
// an index write naming one of them meanwhile finds it missing.
func (q *quota) evictPass(now time.Time, room int64) (refs int, gone []digest.Digest) {
	q.passMu.Lock()
	defer q.passMu.Unlock()
	n := q.at(now)
	doomedRefs, doomed, gone, letGo := q.plan(n, room)
	if !letGo {
		return 0, gone
	}
	for _, r := range doomedRefs {
		if q.deleteRef(r, n) {
			refs++
		}
	}
	q.deleting.Store(false)
	gone = append(gone, q.removeDoomed(doomed, n)...)
	q.mu.Lock()
	if q.used > q.limit {
		q.s.logf("quota: still %d bytes over the limit of %d: blobs clients are using (leases of %s, %s to read)", q.used-q.limit, q.limit, q.lease, q.readLease)
	}
	q.mu.Unlock()
	return refs, gone
}

// plan is evictPass's first step, at n: it takes the loose objects to go
// out of the account (gone), marks the refs to evict going (doomedRefs),
// and says which objects are to go with them (doomed), and whether it let
// go of refs to find them (letGo).
func (q *quota) plan(n stamp, room int64) (doomedRefs, doomed []uint32, gone []digest.Digest, letGo bool) {
	q.s.refsMu.Lock()
	defer q.s.refsMu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	hard := q.limit + q.limit/20
	if !q.known || q.used+room <= q.limit && q.used+q.reserved+room <= hard {
		return nil, nil, nil, false
	}
	target := max(min(q.limit/10*9-room, hard-q.reserved-room), 0)
	for _, c := range q.owners {
		q.expire(c, n)
	}
	q.ripen(&q.held, n)

	// Objects no ref needs whose leases ran out, least recently used
	// first.
	for q.used > target && len(q.idle.e) > 0 {
		q.looked++
		gone = append(gone, q.remove(q.idle.e[0].obj))
	}
	// Nothing refs need is free of leases (bare): letting go of every ref
	// would free nothing.
	if q.ripen(&q.kept, n); q.used <= target || q.bare == 0 || q.isStuck(n) {
		return nil, nil, gone, false
	}
	// Whole refs, least recently used first: each is let go in turn (the
	// needs of its closure counted down) and what then no ref needs and no
	// lease holds is to be removed, until that is enough. A ref let go goes
	// only if an object it names goes, and before it; one whose objects all
	// stay (a ref kept needs them, or a lease holds them) stays: deleting it
	// would free nothing. So the refs naming one artifact (BuildStream's
	// strong and weak key) go together, where neither alone frees anything.
	// The needs are counted up again after: the refs go later (deleteRef).
	var let []uint32
	marked := map[uint32]bool{}
	planned := int64(0)
	r := q.recs[0].newer
	stuckAt := stuck{gen: q.gen, until: math.MaxInt32, set: true}
	for ; r != 0 && q.used-planned > target; r = q.recs[r].newer {
		q.looked++
		let = append(let, r)
		for _, i := range q.recs[r].closure {
			o := &q.objs[i]
			if o.needs > 0 {
				o.needs--
			}
			if o.size < 0 || o.needs > 0 || marked[i] || o.hash == emptyKey {
				continue
			}
			if o.leased(n) {
				if end := max(o.upload, o.told); end > n {
					stuckAt.until = min(stuckAt.until, end)
				}
				continue
			}
			marked[i] = true
			doomed = append(doomed, i)
			planned += o.size
		}
	}
	if r == 0 && q.used-planned > target {
		q.stuckAt = stuckAt // every ref let go, and not enough
	}
	for _, r := range let {
		c := q.recs[r].closure
		doom := slices.ContainsFunc(c, func(i uint32) bool { return marked[i] })
		if doom {
			q.going[r] = false
			doomedRefs = append(doomedRefs, r)
		}
		for _, i := range c {
			q.objs[i].needs++
			if !doom {
				delete(marked, i)
			}
		}
	}
	doomed = slices.DeleteFunc(doomed, func(i uint32) bool { return !marked[i] })
	q.deleting.Store(len(doomedRefs) > 0)
	return doomedRefs, doomed, gone, true
}

// remove takes object i out of the account, to be removed from the store
// (removeFiles), and says which it is.
func (q *quota) remove(i uint32) digest.Digest {
	o := &q.objs[i]
	d := digest.Digest{Hash: hex.EncodeToString(o.hash[:]), Size: o.size}
	q.removing[o.hash] = struct{}{}
	q.unlinking += o.size
	q.drop(i)
	return d
}

// deleteRef deletes the file of ref record r, going, at n, holding no lock
// while it does, and says whether the ref is gone. A ref written again
// since it was planned (claim took it back) stays; an index write of it
// waits while its file goes. A ref deleted leaves the account; one whose
// deletion fails stays, and the next pass tries again.
func (q *quota) deleteRef(r uint32, n stamp) bool {
	q.mu.Lock()
	if _, ok := q.going[r]; !ok {
		q.mu.Unlock()
		return false
	}
	q.going[r] = true
	k := q.recs[r].key()
	q.mu.Unlock()
	err := q.s.store.DeleteRef(k.kind, k.ref)
	if errors.Is(err, cache.ErrNotFound) {
		err = nil
	}
	q.mu.Lock()
	delete(q.going, r)
	if err == nil {
		q.release(q.recs[r].closure, needs, n)
		q.dropRecord(r)
		q.evicted.refs++
	} else {
		q.stuckAt = stuck{}
	}
	q.refGone.Broadcast()
	q.mu.Unlock()
	if err != nil {
		q.s.logf("quota: removing %s ref %s: %v", k.kind, k.ref, err)
	}
	return err == nil
}

// removeDoomed is evictPass's last step, at n: of the objects planned to
// go with the refs, those no ref needs now and no lease holds go out of
// the account (remove), and it says which.
func (q *quota) removeDoomed(doomed []uint32, n stamp) (gone []digest.Digest) {
	q.s.refsMu.Lock()
	defer q.s.refsMu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, i := range doomed {
		if o := &q.objs[i]; o.needs == 0 && !o.leased(n) {
			gone = append(gone, q.remove(i))
		}
	}
	return gone
}

// refGoing says whether an eviction pass is deleting the ref: lookups
// and listings take it as absent.
func (q *quota) refGoing(kind cache.Kind, ref string) bool {
	if !q.deleting.Load() {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	r, ok := q.refs[refKey{kind, ref}]
	_, going := q.going[r]
	return ok && going
}

// claim readies an index write of a ref (callers hold refsMu for reading,
// and call setRef once it is written): if an eviction pass is to delete
// it, the pass leaves it; if the pass is deleting its file, claim waits
// until the file is gone.
func (q *quota) claim(kind cache.Kind, ref string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		r, ok := q.refs[refKey{kind, ref}]
		if !ok {
			return
		}
		deleting, going := q.going[r]
		if !going {
			return
		}
		if !deleting {
			delete(q.going, r)
			return
		}
		q.refGone.Wait()
	}
}

// removeFiles removes the objects an eviction pass planned to, holding no
// lock while it does, and says how many bytes it freed. An object stored
// again since (an upload put it back in the account) stays.
func (q *quota) removeFiles(gone []digest.Digest) (freed int64) {
	for _, d := range gone {
		k, _ := key(d)
		q.mu.Lock()
		_, back := q.slots.find(q.objs, &k)
		q.mu.Unlock()
		var err error
		if !back {
			err = q.s.store.RemoveObject(d)
		}
		q.mu.Lock()
		delete(q.removing, k)
		q.unlinking -= d.Size
		q.changed.Broadcast()
		if !back && err == nil {
			freed += d.Size
			q.evicted.objects++
			q.evicted.bytes += d.Size
		}
		q.mu.Unlock()
		if err != nil {
			q.s.logf("quota: removing %s: %v", d, err)
		}
	}
	return freed
}

// beingRemoved are those of ds an eviction pass is removing: missing to
// an index write.
func (q *quota) beingRemoved(ds []digest.Digest) []digest.Digest {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []digest.Digest
	if len(q.removing) == 0 {
		return nil
	}
	for _, d := range ds {
		if k, ok := key(d); ok {
			if _, ok := q.removing[k]; ok {
				out = append(out, d)
			}
		}
	}
	return out
}

// admit reserves room for a new upload of n bytes by who (a client's
// connection), to be released once it is stored (or failed): release. It
// counts the uploads admitted and not yet stored with the store, so that
// uploads admitted at once cannot together take it past its hard cap (a
// twentieth of the limit past it). When the upload would, it evicts to
// make room; when leases leave none, it ends upload leases on unnamed
// objects (see trim), and evicts again: loose uploads are the most
// expendable, a push names what it uploaded within seconds. Then it waits
// for room, for admitWait at most or until ctx ends (the client gave up),
// looking again whenever room may have freed (a file removed, an upload
// stored, a ref written, a lease ended), and refuses the upload only when the leases left leave none, so leased
// blobs cannot grow the store without bound. Before the store is
// measured, every upload is admitted.
//
// Uploads of clients that left blobs unnamed (loose writers: see
// leftUnnamed) come after the others: the room the others' uploads
// waiting for it need is kept for them, so a loose writer arriving as
// room frees cannot take it from a push that waited, and such an upload
// ends only the leases of clients that left blobs unnamed too.
//
// aside is what else the store holds outside the account (parked uploads):
// it counts, but is not reserved. until is when the wait for room ends:
// zero until a wait begins, which sets it admitWait later. Uploads that
// share it (the parts of one batch: see admitBatch) wait once in all.
func (q *quota) admit(ctx context.Context, n, aside int64, who string, until *time.Time) (*reservation, error) {
	// A client that gives up stops the wait at once.
	stop := context.AfterFunc(ctx, q.wake)
	defer stop()
	q.mu.Lock()
	last := q.clients[who] != nil && leftSome(q.clients[who])
	q.mu.Unlock()
	waited := false // counted in waiting (and in waitingFirst unless last)
	// reserve reserves n bytes if they fit, else says by how much they
	// do not. Files an eviction pass is removing count until they are
	// gone: it waits for them when they are enough.
	reserve := func() (over int64, err error) {
		q.mu.Lock()
		defer q.mu.Unlock()
		for {
			if err := ctx.Err(); err != nil {
				return 0, status.FromContextError(err).Err()
			}
			over = q.used + q.reserved + q.unlinking + n + aside - (q.limit + q.limit/20)
			if last {
				over += q.waitingFirst
			}
			if !q.known || over <= 0 {
				q.reserved += n
				return 0, nil
			}
			if q.unlinking < over {
				return over - q.unlinking, nil
			}
			q.changed.Wait()
		}
	}
	defer func() {
		if waited {
			q.mu.Lock()
			q.waiting -= n
			if !last {
				q.waitingFirst -= n
			}
			q.changed.Broadcast() // the room kept for it is free
			q.mu.Unlock()
		}
	}()
	for step := 0; ; step++ {
		over, err := reserve()
		if err != nil {
			return nil, err
		}
		if over <= 0 {
			return &reservation{q: q, n: n}, nil
		}
		if step >= 2 { // wait for room, a while
			if until.IsZero() {
				*until = time.Now().Add(admitWait)
			}
			deadline := *until
			if !time.Now().Before(deadline) {
				return nil, status.Errorf(codes.ResourceExhausted, "the server is full (%d bytes more than its hard cap, of a %d-byte quota, stored or being uploaded, all in use by clients, after %s): try again shortly", over, q.limit, admitWait)
			}
			if !waited {
				wake := time.AfterFunc(time.Until(deadline), q.wake)
				defer wake.Stop()
				q.mu.Lock()
				waited = true
				q.waiting += n
				if !last {
					q.waitingFirst += n
				}
				q.mu.Unlock()
			}
			// The deadline and ctx are read again under the lock their
			// broadcasts take: read before it, a broadcast could come
			// between the read and the wait, which would then last until
			// something else changed. Leases end by time, with no
			// broadcast: the wait ends when the next one does.
			q.mu.Lock()
			if now := time.Now(); now.Before(deadline) && ctx.Err() == nil {
				var ended *time.Timer
				if end := q.time(q.nextEnd(q.at(now))); end.Before(deadline) {
					ended = time.AfterFunc(end.Sub(now), q.wake)
				}
				q.changed.Wait()
				if ended != nil {
					ended.Stop()
				}
			}
			q.mu.Unlock()
		}
		if step >= 1 { // eviction was not enough: unnamed uploads go
			q.mu.Lock()
			q.trim(over, who, last, q.at(time.Now()))
			q.mu.Unlock()
		}
		q.evict(time.Now(), n+aside)
	}
}

// reservation is room admit reserved for uploads not stored yet. Its
// methods are for the one goroutine that stores them.
type reservation struct {
	q *quota
	n int64 // bytes still reserved
}

// settle gives back the room of n bytes of it: an upload it was for is
// stored (and in the account now) or failed.
func (r *reservation) settle(n int64) {
	q := r.q
	q.mu.Lock()
	n = min(n, r.n)
	r.n -= n
	q.reserved -= n
	q.changed.Broadcast()
	q.mu.Unlock()
}

// release gives back what is left of it.
func (r *reservation) release() { r.settle(r.n) }

// wake wakes the uploads waiting for room, to look again.
func (q *quota) wake() {
	q.mu.Lock()
	q.changed.Broadcast()
	q.mu.Unlock()
}

// admitWait is how long an upload waits for room when leases leave none:
// uploads in progress end and pushes name what they uploaded within
// seconds, and a client's retry would come later.
const admitWait = 5 * time.Second

// trim ends upload leases on unnamed objects until need bytes more can be
// evicted: the client that left the most unnamed loses its oldest first,
// however little it holds (below the bound on loose uploads too); not
// who, whose upload this makes room for, and, when who left blobs unnamed
// itself (last), only clients that did too. A client that uploads and
// never names piles up what it left unnamed and goes first; a push in
// progress, whose refs named what it uploaded before, comes last.
func (q *quota) trim(need int64, who string, last bool, now stamp) {
	self := q.clients[who]
	for freed := int64(0); freed < need; {
		c := q.biggest(now, func(c *client) bool { return c.held > 0 && c != self && (!last || leftSome(c)) }, leftUnnamed)
		if c == nil {
			return
		}
		i, ok := q.dropOldest(c, now)
		if !ok {
			return
		}
		if o := &q.objs[i]; o.needs == 0 && !o.leased(now) {
			freed += o.size
		}
	}
}

// stats reads the account.
func (q *quota) stats() QuotaStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return QuotaStats{Known: q.known, Limit: q.limit, Bytes: q.used, Objects: int64(len(q.objs) - len(q.free)),
		Refs: int64(len(q.refs)), EvictedRefs: q.evicted.refs, EvictedObjects: q.evicted.objects, EvictedBytes: q.evicted.bytes,
		UploadLeased: q.loose, ReadLeased: q.lent, LeaseClients: len(q.clients), Reserved: q.reserved, Removing: q.unlinking, Waiting: q.waiting}
}

// writable says whether the quota can take a write now: the store is
// under its hard cap (see admit), or eviction can make room (an object no
// lease holds: letting go of the refs that need it frees it), which the
// account's order answers (evictable) without walking the objects. Before
// the account is known every write is admitted.
func (q *quota) writable(now time.Time) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return !q.known || q.used < q.limit+q.limit/20 || q.evictable(q.at(now))
}
