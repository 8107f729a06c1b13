package server

import (
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
)

// walkEvictable is how writable found out whether eviction can make room,
// walking the objects until one no lease holds (every object, every
// second, from health, at a full store whose objects are all leased).
func walkEvictable(q *quota, n stamp) bool {
	for i := range q.objs {
		if o := &q.objs[i]; o.size > 0 && !o.leased(n) {
			return true
		}
	}
	return false
}

// writable answers from the account's order what the walk over every
// object answered, in each state the account can be in.
func TestQuotaWritableIsTheWalk(t *testing.T) {
	const lease = 10 * time.Second
	blob := func(s string) digest.Digest { return digest.NewFromBlob([]byte(s)) }
	a, b := blob("a"), blob("b")
	t0 := time.Now()
	later := func(d time.Duration) time.Time { return t0.Add(d) }
	told := func(q *quota, at time.Duration, ds ...digest.Digest) { q.use(ds, later(at)) }
	// pushed is a push at t0: ds uploaded, then ref naming them.
	pushed := func(q *quota, ref string, ds ...digest.Digest) {
		for _, d := range ds {
			q.stored(d, "c1", t0)
		}
		q.setRef(cache.KindBst1Artifact, ref, ds, t0)
	}
	for _, tc := range []struct {
		name  string
		state func(q *quota)
		at    time.Duration // when writable is asked, after t0
		want  bool
	}{
		{"a loose blob under its upload lease", func(q *quota) {
			q.stored(a, "c1", t0)
		}, lease / 2, false},
		{"a loose blob, its upload lease run out", func(q *quota) {
			q.stored(a, "c1", t0)
		}, 2 * lease, true},
		{"a loose blob whose lease was renewed (told) before it ran out", func(q *quota) {
			q.stored(a, "c1", t0)
			told(q, lease/2, a)
		}, lease + lease/4, false},
		{"the renewed lease run out too", func(q *quota) {
			q.stored(a, "c1", t0)
			told(q, lease/2, a)
		}, 2 * lease, true},
		{"a ref's blobs, the ref ending their upload leases", func(q *quota) {
			pushed(q, "p/e/1", a, b)
		}, lease / 2, true},
		{"a ref's blobs, all told of", func(q *quota) {
			pushed(q, "p/e/1", a, b)
			told(q, 0, a, b)
		}, lease / 2, false},
		{"a ref's blobs told of, one lease run out", func(q *quota) {
			pushed(q, "p/e/1", a, b)
			told(q, 0, a, b)
			told(q, lease, b)
		}, lease + lease/2, true},
		{"a ref's blobs read (a read lease)", func(q *quota) {
			pushed(q, "p/e/1", a)
			q.lend([]digest.Digest{a}, "c2", later(lease/4))
		}, lease / 2, false},
		{"a ref's blobs read, the read lease run out", func(q *quota) {
			pushed(q, "p/e/1", a)
			q.lend([]digest.Digest{a}, "c2", later(lease/4))
		}, 2 * lease, true},
		{"a ref's blob read and told of, the read lease run out", func(q *quota) {
			pushed(q, "p/e/1", a)
			q.lend([]digest.Digest{a}, "c2", t0)
			told(q, lease, a)
		}, lease + lease/2, false},
		{"two refs sharing a told blob, one with a blob of its own", func(q *quota) {
			pushed(q, "p/e/1", a)
			pushed(q, "p/f/1", a, b)
			told(q, 0, a)
		}, lease / 2, true},
		{"a ref written again over told blobs, its old blob told of", func(q *quota) {
			q.stored(b, "c1", t0)
			pushed(q, "p/e/1", a)
			told(q, 0, a, b)
			q.setRef(cache.KindBst1Artifact, "p/e/1", []digest.Digest{b}, later(time.Second))
		}, lease / 2, false},
		{"the empty blob (never evicted) and a blob told of", func(q *quota) {
			q.stored(emptyDigest, "c1", t0)
			q.stored(a, "c1", t0)
			told(q, lease, a)
		}, lease + lease/2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, _ := testAccount(t, 1<<40, lease)
			q.epoch = t0.Add(-time.Hour)
			tc.state(q)
			q.mu.Lock()
			q.limit = 1 // the store over its hard cap
			q.mu.Unlock()
			got := q.writable(later(tc.at))
			q.mu.Lock()
			walked := walkEvictable(q, q.at(later(tc.at)))
			q.mu.Unlock()
			if got != tc.want || walked != tc.want {
				t.Errorf("writable: %v, the walk over every object: %v; want %v", got, walked, tc.want)
			}
		})
	}

	t.Run("under the hard cap", func(t *testing.T) {
		q, _ := testAccount(t, 1<<40, lease)
		q.stored(a, "c1", t0)
		if !q.writable(t0) {
			t.Error("writable: false under the hard cap")
		}
	})
	t.Run("before the account is known", func(t *testing.T) {
		q, _ := walkedAccount(t, 1, lease)
		q.stored(a, "c1", t0)
		if !q.writable(t0) {
			t.Error("writable: false before the account is known")
		}
	})
}

// evictable answers what the walk answers through random histories too
// (TestQuotaPassIsTheReference's), after every step.
func checkEvictable(t *testing.T, q *quota, now time.Time, step int) {
	t.Helper()
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.at(now)
	if got, want := q.evictable(n), walkEvictable(q, n); got != want {
		t.Fatalf("step %d: evictable %v, the walk over every object %v (idle %d, bare %d)", step, got, want, len(q.idle.e), q.bare)
	}
}
