package transfer

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// recorder keeps what one caller's Events were told.
type recorder struct {
	mu          sync.Mutex
	warns, info []string
}

func (r *recorder) events() Events {
	add := func(to *[]string) func(string) {
		return func(m string) {
			r.mu.Lock()
			*to = append(*to, m)
			r.mu.Unlock()
		}
	}
	return Events{OnWarn: add(&r.warns), OnInfo: add(&r.info)}
}

// count is how many lines of warnings or info hold s.
func (r *recorder) count(lines *[]string, s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, l := range *lines {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// downableServe starts `bst-cache serve` (the real binary) on a store
// holding a BuildStream 1 artifact under ref, behind the fault proxy, and
// returns the cache as reached through the proxy and the proxy's count of
// calls to answer UNAVAILABLE (a server down or restarting). The first
// wait before a dead cache is probed again is backoff.
func downableServe(t *testing.T, ref string, a art, backoff time.Duration) (*Cache, *atomic.Int64) {
	t.Helper()
	srv := testenv.StartServe(t, testenv.ServeOptions{Dir: storeHolding(t, ref, a)})
	fail := &atomic.Int64{}
	addr := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{Unavailable: fail})
	c := NewCaches([]config.Cache{{
		Name: "serve", URL: "http://" + addr, Type: config.TypeAll, MaxConcurrency: 4,
		Endpoint:   config.Endpoint{Target: addr},
		Connection: config.Connection{ConnectTimeout: 5 * time.Second, RequestTimeout: 30 * time.Second, RetryDelay: 20 * time.Millisecond, RetryLimit: 2},
	}}, 0)[0]
	c.backoff = backoff
	t.Cleanup(func() { Close([]*Cache{c}) })
	return c, fail
}

// storeHolding makes a BuildStream 1 store holding a under ref, for a
// server to serve, and returns its directory.
func storeHolding(t *testing.T, ref string, a art) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	store, err := cache.Open(dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range a.blobs {
		if _, err := store.Add(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.SetRef(cache.KindBst1Artifact, ref, buildstream.V1RefContent(a.root)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// down is as many failing calls as a test makes: the server is down.
const down = 1 << 30

// engineFor is a BuildStream 1 engine over a fresh local store telling ev.
func engineFor(t *testing.T, caches []*Cache, ev Events) *Engine {
	t.Helper()
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	return &Engine{Store: store, Kind: cache.KindBst1Artifact, Caches: caches, Jobs: 2, Events: ev}
}

// Two callers sharing a cache (a which, then pulls, as a process serving
// several clients would) are each told of their own retries and of the
// cache being skipped, whichever of them connected first (issue 18).
func TestEachCallerGetsItsOwnEvents(t *testing.T) {
	const ref = "demo/app/key"
	const backoff = time.Second
	c, fail := downableServe(t, ref, artifact("one", "two"), backoff)
	var which, pull recorder
	caches := []*Cache{c}
	whichEng := engineFor(t, caches, which.events())
	pullRef := func() Result {
		r, _ := engineFor(t, caches, pull.events()).Pull(context.Background(), []string{ref}, PullOptions{})
		return r[0]
	}
	whichRef := func() Location { return whichEng.Which(context.Background(), []string{ref}, nil)[0] }

	// which connects first, on its own behalf.
	if l := whichRef(); l.Status != Present {
		t.Fatalf("which: %+v", l)
	}
	// One call of each caller fails once and is retried.
	fail.Store(1)
	if r := pullRef(); r.Status != StatusDone {
		t.Fatalf("pull: %+v", r)
	}
	fail.Store(1)
	if l := whichRef(); l.Status != Present {
		t.Fatalf("which: %+v", l)
	}
	for _, r := range []*recorder{&pull, &which} {
		if n := r.count(&r.info, "Unavailable; retry 1"); n != 1 {
			t.Errorf("a caller was told of %d retries, want its own 1: %q", n, r.info)
		}
	}
	// The cache goes down: the caller that finds it so is told, and
	// so is the one that probes it again once it is due.
	fail.Store(down)
	if r := pullRef(); r.Status != StatusFailed {
		t.Fatalf("pull from a cache that is down: %+v", r)
	}
	if pull.count(&pull.warns, "skipped, asked again in") != 1 {
		t.Errorf("the pull was not told of the cache being skipped: %q", pull.warns)
	}
	time.Sleep(backoff + 100*time.Millisecond)
	if l := whichRef(); l.Status != Failed {
		t.Fatalf("which of a cache that is down: %+v", l)
	}
	if which.count(&which.info, "still skipped, asked again in") != 1 || len(which.warns) != 0 {
		t.Errorf("which was not told of its own probe: warnings %q, info %q", which.warns, which.info)
	}
}

// A cache that is down, then comes back, is skipped for the backoff and
// then used again (issue 18): the waits between probes double up to a
// bound.
func TestDeadCacheIsAskedAgainAfterBackoff(t *testing.T) {
	const ref = "demo/app/key"
	const backoff = time.Second
	c, fail := downableServe(t, ref, artifact("one", "two"), backoff)
	var rec recorder
	pull := func() Result {
		r, _ := engineFor(t, []*Cache{c}, rec.events()).Pull(context.Background(), []string{ref}, PullOptions{})
		return r[0]
	}

	fail.Store(down)
	start := time.Now()
	if r := pull(); r.Status != StatusFailed {
		t.Fatalf("pull from a cache that is down: %+v", r)
	}
	failed := time.Now()
	fail.Store(0)
	// Within the backoff the cache is not asked.
	if r := pull(); r.Status != StatusFailed && time.Since(start) < backoff {
		t.Fatalf("pull within the backoff: %+v", r)
	}
	time.Sleep(time.Until(failed.Add(backoff + 100*time.Millisecond)))
	if r := pull(); r.Status != StatusDone || r.Cache != "serve" {
		t.Fatalf("pull once the cache is back and the backoff over: %+v; warnings %q, info %q", r, rec.warns, rec.info)
	}
	if rec.count(&rec.info, "answers again") != 1 {
		t.Errorf("no line saying the cache answers again: %q", rec.info)
	}
	// Down again once it was used, then back: asked again, after twice
	// the wait.
	fail.Store(down)
	if r := pull(); r.Status != StatusFailed {
		t.Fatalf("pull from a cache that went down again: %+v", r)
	}
	failed = time.Now()
	fail.Store(0)
	time.Sleep(time.Until(failed.Add(2*backoff + 100*time.Millisecond)))
	if r := pull(); r.Status != StatusDone || r.Cache != "serve" {
		t.Fatalf("pull once the cache is back again: %+v; warnings %q, info %q", r, rec.warns, rec.info)
	}
	if rec.count(&rec.warns, "skipped, asked again in "+(2*backoff).String()) != 1 {
		t.Errorf("want the second outage skipped for twice the first: %q", rec.warns)
	}

	// The waits double, up to reprobeMax.
	c.mu.Lock()
	defer c.mu.Unlock()
	var waits []time.Duration
	for range 10 {
		waits = append(waits, c.skip(nil))
	}
	if waits[0] != 4*backoff || waits[1] != 8*backoff || waits[9] != reprobeMax {
		t.Errorf("waits between probes %v: want each twice the last from %s, at most %s", waits, 4*backoff, reprobeMax)
	}
	// A cache that answered for reprobeMax since it came back starts
	// again from the first wait: a server lives for months.
	c.revived = time.Now().Add(-reprobeMax)
	if w := c.skip(nil); w != backoff {
		t.Errorf("wait after %s of answers: %s, want %s", reprobeMax, w, backoff)
	}
}
