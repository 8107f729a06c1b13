package server

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
)

// passAccount is an account shaped like the store genrefs makes (as the
// start-up walk finds it): n artifacts of two refs (strong and weak key)
// sharing one closure of 7 objects of their own and one of 1,000 shared
// ones, used in a random order, every lease run out, over an empty store
// (an evicted ref's file is already gone). It is known, its limit just
// under what it holds: a pass evicts a tenth of it.
func passAccount(tb testing.TB, n int) *quota {
	tb.Helper()
	q, _ := walkedAccount(tb, 0, time.Minute)
	q.epoch = time.Now().Add(-time.Hour)
	obj := func(seed int) digest.Digest {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(seed))
		h := sha256.Sum256(b[:])
		return digest.Digest{Hash: hex.EncodeToString(h[:]), Size: int64(1000 + seed%4096)}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	shared := make([]digest.Digest, 1000)
	for i := range shared {
		shared[i] = obj(-1 - i)
		q.add(shared[i])
	}
	uses := rng.Perm(n)
	for a := range n {
		ds := make([]digest.Digest, 0, 8)
		for i := range 7 {
			d := obj(a*7 + i)
			q.add(d)
			ds = append(ds, d)
		}
		ds = append(ds, shared[rng.IntN(len(shared))])
		closure := q.indexes(ds, false)
		used := q.epoch.Add(time.Duration(uses[a]) * time.Millisecond).UnixNano()
		strong := q.setRecord(refKey{cache.KindBst1Artifact, fmt.Sprintf("project/element-%06d/strong-%056x", a, a)}, closure, used, 0)
		weak := q.setRecord(refKey{cache.KindBst1Artifact, fmt.Sprintf("project/element-%06d/weak-%056x", a, a)}, closure, used, 0)
		q.join(weak, strong) // as the start-up walk finds them
	}
	for i := range q.objs {
		q.objs[i].used = q.at(q.epoch.Add(time.Duration(i) * time.Millisecond))
	}
	q.limit = q.used - q.used/1000
	q.know(time.Now(), q.useOrder())
	return q
}

// writeRefFiles gives q's n least recently used refs a file in its
// store, as a store genrefs made has: a pass removes the files of the refs
// it evicts.
func writeRefFiles(tb testing.TB, q *quota, n int) {
	tb.Helper()
	for r := q.recs[0].newer; r != 0 && n > 0; r, n = q.recs[r].newer, n-1 {
		k := q.recs[r].key()
		p, err := q.s.store.RefPath(k.kind, k.ref)
		if err == nil {
			err = os.MkdirAll(filepath.Dir(p), 0o755)
		}
		if err == nil {
			err = os.WriteFile(p, []byte(k.ref), 0o644)
		}
		if err != nil {
			tb.Fatal(err)
		}
	}
}

// timePass runs one eviction pass over q and says how long it took and
// the longest a lookup (a ref's use, under the index lock, as
// lookupEntry takes it: unless the ref is going) waited meanwhile.
func timePass(q *quota) (pass, wait time.Duration, refs int) {
	var stop atomic.Bool
	var longest time.Duration
	var wg sync.WaitGroup
	started := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		k := refKey{cache.KindBst1Artifact, "project/none/strong"}
		for i := 0; !stop.Load(); i++ {
			t := time.Now()
			q.s.refsMu.RLock()
			if !q.refGoing(k.kind, k.ref) {
				q.useRef(k.kind, k.ref, t)
			}
			q.s.refsMu.RUnlock()
			longest = max(longest, time.Since(t))
			if i == 0 {
				close(started)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	<-started
	start := time.Now()
	refs, _ = q.evictPass(time.Now(), 0)
	pass = time.Since(start)
	time.Sleep(time.Millisecond)
	stop.Store(true)
	wg.Wait()
	return pass, longest, refs
}

// One eviction pass at the scale: 200,000 refs and 700,000
// objects (go test -bench QuotaPass -run ^$ -benchtime 3x ./server/).
// "evict" puts the account over its limit by a little (the pass evicts a
// tenth of it); "held" also holds every object under a lease, so a pass
// finds nothing to evict, as one an upload waiting for room runs at each
// wake-up (and again).
func BenchmarkQuotaPass(b *testing.B) {
	for _, held := range []bool{false, true} {
		b.Run(map[bool]string{false: "evict", true: "held"}[held], func(b *testing.B) {
			var passes, waits, again, againWaits []time.Duration
			b.StopTimer()
			for range b.N {
				q := passAccount(b, 100_000)
				if held {
					for i := range q.objs {
						q.objs[i].told = math.MaxInt32
						q.place(uint32(i), q.at(time.Now()))
					}
				} else {
					writeRefFiles(b, q, 30_000) // the pass evicts 20,136
				}
				pass, wait, refs := timePass(q)
				passes, waits = append(passes, pass), append(waits, wait)
				b.ReportMetric(float64(refs), "refs/op")
				if held { // and again, as an upload waiting for room does
					pass, wait, _ := timePass(q)
					again, againWaits = append(again, pass), append(againWaits, wait)
				}
			}
			b.ReportMetric(float64(slices.Max(passes).Microseconds())/1000, "max-pass-ms")
			b.ReportMetric(float64(slices.Max(waits).Microseconds())/1000, "max-lookup-wait-ms")
			if held {
				b.ReportMetric(float64(slices.Max(again).Microseconds())/1000, "again-max-pass-ms")
				b.ReportMetric(float64(slices.Max(againWaits).Microseconds())/1000, "again-max-lookup-wait-ms")
			}
		})
	}
}

// A pass looks at what it evicts, not at the whole account: on an account
// of 50,000 refs and 180,000 objects, 4,000 of them loose (half leased),
// a pass that evicts a tenth of it looks at about the refs and objects it
// evicts; one that finds every object leased looks at almost nothing, nor
// does health's writable. (On main a pass walked every object and sorted
// every ref: 226,000 looked at, each pass; writable walked every object.
// Before the count of unleased objects refs need, the first pass over
// every object leased let go of every ref.)
func TestQuotaPassLooksAtWhatItEvicts(t *testing.T) {
	q := passAccount(t, 25_000)
	now := time.Now()
	q.mu.Lock()
	for i := range 4000 { // loose: 2,000 unleased, 2,000 leased
		d := digest.NewFromBlob([]byte(fmt.Sprint("loose ", i)))
		j := q.add(d)
		q.objs[j].used = q.at(now.Add(-time.Duration(4000-i) * time.Second))
		if i%2 == 1 {
			q.objs[j].told = q.until(now, time.Hour)
		}
		q.place(j, q.at(now))
	}
	q.limit = q.used - q.used/1000
	refs, objects, looked := len(q.refs), len(q.objs), q.looked
	q.mu.Unlock()

	evicted, gone := q.evictPass(now, 0)
	q.mu.Lock()
	seen := q.looked - looked
	q.mu.Unlock()
	t.Logf("%d refs, %d objects: the pass evicted %d refs, %d objects, and looked at %d", refs, objects, evicted, len(gone), seen)
	if evicted == 0 || len(gone) < 2000 {
		t.Fatalf("the pass evicted %d refs and %d objects: want refs, and the 2,000 loose objects no lease holds first", evicted, len(gone))
	}
	if seen > int64(evicted+len(gone))+16 {
		t.Errorf("the pass looked at %d refs and objects to evict %d refs and %d objects", seen, evicted, len(gone))
	}

	// Every object leased (a client told of each), the store over its
	// limit again: a pass finds nothing refs need free of leases, and
	// looks at almost nothing, nor do the next ones.
	q.mu.Lock()
	for i := range q.objs {
		if o := &q.objs[i]; o.size >= 0 {
			o.told = q.until(now, time.Hour)
			q.place(uint32(i), q.at(now))
		}
	}
	q.limit = q.used - q.used/1000
	q.mu.Unlock()
	for pass := range 3 {
		q.mu.Lock()
		looked := q.looked
		q.mu.Unlock()
		if evicted, gone := q.evictPass(now.Add(time.Second), 0); evicted != 0 || len(gone) != 0 {
			t.Fatalf("a pass evicted %d refs and %d objects, all leased", evicted, len(gone))
		}
		q.mu.Lock()
		seen := q.looked - looked
		q.mu.Unlock()
		t.Logf("leased pass %d looked at %d", pass, seen)
		if seen > 16 {
			t.Errorf("leased pass %d looked at %d refs and objects, every object leased", pass, seen)
		}
	}

	// Over the hard cap, every object leased, health asking whether a
	// write can be taken (writable, every second) is told no looking at
	// almost nothing, where it walked every object each time.
	q.mu.Lock()
	q.limit = q.used * 9 / 10
	looked = q.looked
	q.mu.Unlock()
	for range 3 {
		if q.writable(now.Add(2 * time.Second)) {
			t.Fatal("writable over the hard cap, every object leased")
		}
	}
	q.mu.Lock()
	seen = q.looked - looked
	q.mu.Unlock()
	if seen > 16 {
		t.Errorf("writable looked at %d objects, all leased", seen)
	}
}

// referencePlan is what a pass over q at n, making room bytes, removes,
// planned the straightforward way the account's contract states (loose
// objects no lease holds least recently used first, then refs by last use,
// used, each let go in turn and kept when it frees nothing), walking and
// sorting everything: the refs it evicts and the objects it removes.
func referencePlan(q *quota, used map[refKey]int64, n stamp, room int64) (refs []refKey, gone [][32]byte) {
	hard := q.limit + q.limit/20
	if q.used+room <= q.limit && q.used+q.reserved+room <= hard {
		return nil, nil
	}
	target := max(min(q.limit/10*9-room, hard-q.reserved-room), 0)
	total := q.used
	free := func(o *object) bool { return o.size >= 0 && o.hash != emptyKey && !o.leased(n) }
	var loose []uint32
	for i := range q.objs {
		if o := &q.objs[i]; o.needs == 0 && free(o) {
			loose = append(loose, uint32(i))
		}
	}
	slices.SortFunc(loose, func(a, b uint32) int { return cmp.Or(cmp.Compare(q.objs[a].used, q.objs[b].used), cmp.Compare(a, b)) })
	for _, i := range loose {
		if total <= target {
			return nil, gone
		}
		gone = append(gone, q.objs[i].hash)
		total -= q.objs[i].size
	}
	keys := slices.Collect(maps.Keys(q.refs))
	slices.SortFunc(keys, func(a, b refKey) int { return cmp.Compare(used[a], used[b]) })
	needs := map[uint32]int32{}
	for i := range q.objs {
		needs[uint32(i)] = q.objs[i].needs
	}
	marked := map[uint32]bool{}
	var let []refKey
	var doomed []uint32
	planned := int64(0)
	for _, k := range keys {
		if total-planned <= target {
			break
		}
		let = append(let, k)
		for _, i := range q.recs[q.refs[k]].closure {
			if needs[i] > 0 {
				needs[i]--
			}
			if o := &q.objs[i]; needs[i] == 0 && free(o) && !marked[i] {
				marked[i] = true
				doomed = append(doomed, i)
				planned += o.size
			}
		}
	}
	for _, k := range let {
		c := q.recs[q.refs[k]].closure
		if slices.ContainsFunc(c, func(i uint32) bool { return marked[i] }) {
			refs = append(refs, k)
			continue
		}
		for _, i := range c {
			delete(marked, i)
		}
	}
	for _, i := range doomed {
		if marked[i] {
			gone = append(gone, q.objs[i].hash)
		}
	}
	return refs, gone
}

// The account's order gives every pass the plan the contract's
// straightforward reading gives (referencePlan), through random writes,
// uploads, reads, leases of three clients, uses and passes, from a start-up
// walk's account on: kept in order as the account changes, the order
// must not drift from it. After every step, whether a pass can free
// anything (health's writable) is what a walk over every object says.
func TestQuotaPassIsTheReference(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			q := passAccount(t, 0)
			rng := rand.New(rand.NewPCG(seed, 7))
			q.lease, q.readLease = 3*time.Second, 2*time.Second
			now := q.epoch.Add(time.Hour)
			var pool []digest.Digest
			for i := range 300 {
				pool = append(pool, digest.NewFromBlob(fmt.Appendf(nil, "%d %d", seed, i)))
			}
			pick := func(n int) []digest.Digest {
				out := make([]digest.Digest, 0, n)
				for range n {
					out = append(out, pool[rng.IntN(len(pool))])
				}
				slices.SortFunc(out, func(a, b digest.Digest) int { return strings.Compare(a.Hash, b.Hash) })
				return slices.Compact(out)
			}
			used := map[refKey]int64{}
			clients := []string{"", "10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"}
			// The start-up walk's account: objects and refs from file
			// times, in no order, an artifact's two refs sharing a closure.
			q.known = false
			q.pending = map[refKey]int64{}
			for _, d := range pool[:200] {
				q.object(cache.ObjectInfo{Digest: d, Modified: now.Add(-time.Duration(rng.IntN(3600)) * time.Second)})
			}
			for a := range 40 {
				closure := q.indexes(pick(1+rng.IntN(6)), false)
				at := now.Add(-time.Duration(rng.IntN(3600_000)) * time.Millisecond).UnixNano()
				first := uint32(0)
				for _, key := range []string{"strong", "weak"} {
					k := refKey{cache.KindBst1Artifact, fmt.Sprintf("walk/%d/%s", a, key)}
					at += int64(rng.IntN(1000)) * 1e6
					r := q.setRecord(k, closure, at, 0)
					used[k] = at
					if first != 0 {
						q.join(r, first)
					}
					first = r
				}
			}
			// Refs used and written while the order is sorted.
			order := q.useOrder()
			for i := range 10 {
				now = now.Add(time.Millisecond)
				k := refKey{cache.KindBst1Artifact, fmt.Sprintf("walk/%d/%s", rng.IntN(40), []string{"strong", "weak"}[i%2])}
				if i%3 == 0 {
					k.ref = fmt.Sprint("sorting/", i)
					q.setRef(k.kind, k.ref, pick(1+rng.IntN(4)), now)
				} else {
					q.useRef(k.kind, k.ref, now)
				}
				used[k] = now.UnixNano()
			}
			q.know(now, order)
			passes := 0
			for step := range 3000 {
				now = now.Add(time.Duration(1+rng.IntN(200)) * time.Millisecond)
				who := clients[rng.IntN(len(clients))]
				switch op := rng.IntN(20); {
				case op < 5:
					for _, d := range pick(1 + rng.IntN(3)) {
						q.stored(d, who, now)
					}
				case op < 8: // a push: its blobs, then its refs
					ds := pick(1 + rng.IntN(6))
					for _, d := range ds {
						q.stored(d, who, now)
					}
					a := rng.IntN(80)
					for _, key := range []string{"strong", "weak"}[:1+rng.IntN(2)] {
						now = now.Add(time.Millisecond)
						k := refKey{cache.KindBst1Artifact, fmt.Sprintf("push/%d/%s", a, key)}
						q.setRef(k.kind, k.ref, ds, now)
						used[k] = now.UnixNano()
					}
				case op < 11:
					keys := slices.Collect(maps.Keys(used))
					if len(keys) == 0 {
						continue
					}
					slices.SortFunc(keys, func(a, b refKey) int { return strings.Compare(a.ref, b.ref) })
					k := keys[rng.IntN(len(keys))]
					q.useRef(k.kind, k.ref, now)
					if _, ok := q.refs[k]; ok {
						used[k] = now.UnixNano()
					}
				case op < 14:
					q.use(pick(1+rng.IntN(4)), now)
				case op < 16:
					q.lend(pick(1+rng.IntN(5)), who, now)
				default:
					n := q.at(now)
					room := int64(rng.IntN(3)) * 500
					q.mu.Lock()
					for _, c := range q.owners {
						q.expire(c, n)
					}
					q.limit = max(q.used*int64(85+rng.IntN(20))/100, 1)
					wantRefs, wantGone := referencePlan(q, used, n, room)
					q.mu.Unlock()
					before := maps.Clone(q.refs)
					_, gone := q.evictPass(now, room)
					var gotRefs []refKey
					for k := range before {
						if _, ok := q.refs[k]; !ok {
							gotRefs = append(gotRefs, k)
							delete(used, k)
						}
					}
					var gotGone [][32]byte
					for _, d := range gone {
						k, _ := key(d)
						gotGone = append(gotGone, k)
					}
					sortRefs := func(r []refKey) { slices.SortFunc(r, func(a, b refKey) int { return strings.Compare(a.ref, b.ref) }) }
					sortRefs(wantRefs)
					sortRefs(gotRefs)
					sortHashes := func(h [][32]byte) { slices.SortFunc(h, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) }) }
					sortHashes(wantGone)
					sortHashes(gotGone)
					if !slices.Equal(wantRefs, gotRefs) || !slices.Equal(wantGone, gotGone) {
						t.Fatalf("step %d: the pass evicted refs %v and objects %x; the reference %v and %x", step, gotRefs, gotGone, wantRefs, wantGone)
					}
					q.mu.Lock()
					clear(q.removing)
					q.unlinking = 0
					q.mu.Unlock()
					if len(gotRefs) > 0 || len(gotGone) > 0 {
						passes++
					}
				}
				checkEvictable(t, q, now, step)
			}
			if passes < 20 {
				t.Errorf("only %d passes evicted anything", passes)
			}
			t.Logf("%d passes evicted", passes)
		})
	}
}
