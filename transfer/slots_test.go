package transfer

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/remotes"
)

// pacedCache is a fakeCache whose calls take a while and which counts
// what runs at once: lookups, and the refs whose blobs are being read.
type pacedCache struct {
	*fakeCache
	owner map[digest.Digest]string // blob -> the ref it belongs to

	mu                  sync.Mutex
	lookups, maxLookups int
	reading             map[string]int
	maxReading          int
}

func (p *pacedCache) FetchDirectory(ctx context.Context, uri string) (digest.Digest, error) {
	p.mu.Lock()
	p.lookups++
	p.maxLookups = max(p.maxLookups, p.lookups)
	p.mu.Unlock()
	time.Sleep(5 * time.Millisecond) // a round trip
	defer func() {
		p.mu.Lock()
		p.lookups--
		p.mu.Unlock()
	}()
	return p.fakeCache.FetchDirectory(ctx, uri)
}

func (p *pacedCache) BatchReadEach(ctx context.Context, ds []digest.Digest, fn func(digest.Digest, [][]byte) error) ([]digest.Digest, error) {
	refs := map[string]bool{}
	for _, d := range ds {
		if r := p.owner[d]; r != "" {
			refs[r] = true
		}
	}
	p.mu.Lock()
	for r := range refs {
		p.reading[r]++
	}
	p.maxReading = max(p.maxReading, len(p.reading))
	p.mu.Unlock()
	time.Sleep(2 * time.Millisecond)
	defer func() {
		p.mu.Lock()
		for r := range refs {
			if p.reading[r]--; p.reading[r] == 0 {
				delete(p.reading, r)
			}
		}
		p.mu.Unlock()
	}()
	return p.fakeCache.BatchReadEach(ctx, ds, fn)
}

// --jobs bounds the refs that move bytes, not the refs being asked about:
// with one job, lookups of many refs still run at once (a no-op over many
// refs is bound by round trips shared, not paid one ref after another),
// while blobs of one ref at a time are read.
func TestJobsBoundBytesNotQuestions(t *testing.T) {
	p := &pacedCache{fakeCache: newFake("paced"), owner: map[digest.Digest]string{}, reading: map[string]int{}}
	var refs []string
	for i := range 40 {
		ref := fmt.Sprintf("demo/e%d/key", i)
		a := artifact(fmt.Sprint("own content ", i), fmt.Sprint("more of ", i))
		p.holding(ref, a)
		for d := range a.blobs {
			p.owner[d] = ref
		}
		refs = append(refs, ref)
	}
	c := &Cache{Config: config.Cache{Name: "paced", URL: "fake://paced", Type: config.TypeAll, MaxConcurrency: 64}}
	c.dial = func(context.Context, config.Cache, remote, ...remotes.Option) (remote, remotes.Capabilities, error) {
		return p, remotes.Capabilities{CAS: true, BatchRead: true, RemoteAssetFetch: true}, nil
	}
	var warns []string
	e := newEngine(t, []*Cache{c}, false, &warns)
	e.Jobs = 1
	results, _ := e.Pull(context.Background(), refs, PullOptions{})
	for _, r := range results {
		if r.Status != StatusDone {
			t.Fatalf("%s: %s (%s)", r.Ref, r.Status, r.Reason)
		}
	}
	if p.maxLookups < 8 {
		t.Errorf("at most %d lookups ran at once with --jobs 1; want refs asked ahead of the one moving bytes", p.maxLookups)
	}
	if p.maxReading != 1 {
		t.Errorf("blobs of %d refs were read at once with --jobs 1", p.maxReading)
	}
	// A second pull from the cache (as copy does) moves nothing and
	// writes no ref: the file is the one the first pull wrote.
	path, err := e.Store.RefPath(e.Kind, refs[0])
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(path)
	results, st := e.Pull(context.Background(), refs, PullOptions{Evidence: true})
	if st.Pulled.Blobs != 0 || results[0].Status != StatusDone {
		t.Errorf("second pull: %d blobs pulled, %s", st.Pulled.Blobs, results[0].Status)
	}
	if after, err := os.Stat(path); err != nil || !os.SameFile(before, after) {
		t.Errorf("a pull that moved nothing rewrote the ref (%v)", err)
	}
}
