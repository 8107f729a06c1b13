package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/remotes"
	"github.com/bst-cache/bst-cache/server"
)

// loadCounts are what the load test saw.
type loadCounts struct {
	pushes, failedPushes, pulls, evictedPulls, corrupt, rawWrites atomic.Int64
}

// 64 clients push, pull and write raw blobs for 45 s (BST_CACHE_LOAD_SECONDS
// to change it) against serve under a quota that forces eviction all along:
// no push fails, no read-back is corrupt, and once the clients stop and the
// lease runs out the store is under its quota with refs left.
func TestLoadUnderQuota(t *testing.T) {
	seconds := 45
	if s := os.Getenv("BST_CACHE_LOAD_SECONDS"); s != "" {
		fmt.Sscan(s, &seconds)
	}
	const quota = 64 << 20
	// Longer than any push takes here, even under the race detector.
	const lease = 15 * time.Second
	dir := t.TempDir()
	store, err := cache.Open(dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	addr, _, _ := startServer(t, server.Options{Store: store, AllowWrites: true, Quota: quota, Lease: lease})
	// Clients stop between operations at the end, never in the middle of
	// one.
	end := time.Now().Add(time.Duration(seconds) * time.Second)
	ctx := context.Background()

	var c loadCounts
	var mu sync.Mutex
	var pushed []string
	shared := bytes.Repeat([]byte("shared by every push "), 1000)
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := dialRemote(t, addr)
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for n := 0; time.Now().Before(end); n++ {
				switch rng.IntN(3) {
				case 0: // a push: unique files and a shared one, then the ref
					files := map[string][]byte{"shared": shared}
					for f := range 3 {
						b := make([]byte, 8<<10+rng.IntN(56<<10))
						for k := range b {
							b[k] = byte(rng.Uint32())
						}
						files[fmt.Sprint("f", f)] = b
					}
					root, blobs := artifactTree(files)
					ref := fmt.Sprintf("demo/c%d/%d", i, n)
					_, _, err := r.Upload(ctx, slices.Collect(maps.Keys(blobs)), remotes.MemoryOpener(blobs), 4)
					if err == nil {
						err = r.PushDirectory(ctx, []string{buildstream.URNBst1Artifact + ref}, root)
					}
					c.pushes.Add(1)
					if err != nil {
						c.failedPushes.Add(1)
						t.Errorf("push %s: %v", ref, err)
						continue
					}
					mu.Lock()
					pushed = append(pushed, ref)
					mu.Unlock()
				case 1: // a pull of a ref pushed by anyone, read back and checked
					mu.Lock()
					var ref string
					if len(pushed) > 0 {
						ref = pushed[rng.IntN(len(pushed))]
					}
					mu.Unlock()
					if ref == "" {
						continue
					}
					c.pulls.Add(1)
					if err := readBack(ctx, r, ref); errors.Is(err, remotes.ErrNotFound) {
						c.evictedPulls.Add(1)
					} else if errors.Is(err, remotes.ErrCorrupt) {
						c.corrupt.Add(1)
						t.Errorf("pull %s: %v", ref, err)
					}
				default: // a raw write nobody will name
					b := make([]byte, 4<<10+rng.IntN(60<<10))
					for k := range b {
						b[k] = byte(rng.Uint32())
					}
					d := digest.NewFromBlob(b)
					if _, _, err := r.Upload(ctx, []digest.Digest{d}, remotes.MemoryOpener(map[digest.Digest][]byte{d: b}), 1); err == nil {
						c.rawWrites.Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d s, 64 clients: %d pushes (%d failed), %d pulls (%d of refs since evicted, %d corrupt), %d raw writes",
		seconds, c.pushes.Load(), c.failedPushes.Load(), c.pulls.Load(), c.evictedPulls.Load(), c.corrupt.Load(), c.rawWrites.Load())

	// Once the lease has run out, one more write brings the store under
	// its quota, and refs are left.
	time.Sleep(lease + time.Second)
	r := dialRemote(t, addr)
	root, blobs := artifactTree(map[string][]byte{"last": []byte("the last push")})
	if _, _, err := r.Upload(context.Background(), slices.Collect(maps.Keys(blobs)), remotes.MemoryOpener(blobs), 1); err != nil {
		t.Fatal(err)
	}
	if err := r.PushDirectory(context.Background(), []string{buildstream.URNBst1Artifact + "demo/last/1"}, root); err != nil {
		t.Fatal(err)
	}
	var used int64
	deadline := time.Now().Add(10 * time.Second)
	for {
		used = 0
		store.WalkObjects(func(o cache.ObjectInfo) error { used += o.Digest.Size; return nil })
		if used <= quota || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	refs, _ := store.ListRefs(cache.KindBst1Artifact, "")
	t.Logf("after the load: %d bytes of objects for a quota of %d, %d refs left", used, quota, len(refs))
	if used > quota || len(refs) == 0 {
		t.Errorf("store %d bytes (quota %d), %d refs: want under quota with refs left", used, quota, len(refs))
	}
	for _, ref := range refs {
		if err := readBack(context.Background(), r, ref.Name); err != nil {
			t.Errorf("ref %s left after the load: %v", ref.Name, err)
		}
	}
}

// readBack resolves a ref and reads every blob of its tree, verified.
func readBack(ctx context.Context, r *remotes.Remote, ref string) error {
	root, err := r.FetchDirectory(ctx, buildstream.URNBst1Artifact+ref)
	if err != nil {
		return err
	}
	dirs, err := r.GetTree(ctx, root)
	if err != nil {
		return err
	}
	var ds []digest.Digest
	for _, d := range dirs {
		for _, f := range d.GetFiles() {
			ds = append(ds, digest.NewFromProtoUnvalidated(f.GetDigest()))
		}
	}
	found, missing, err := r.BatchRead(ctx, ds)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("%d blobs of %s: %w", len(missing), ref, remotes.ErrNotFound)
	}
	if len(found) != len(uniq(ds)) {
		return fmt.Errorf("%s: %d of %d blobs: %w", ref, len(found), len(ds), remotes.ErrCorrupt)
	}
	return nil
}

func uniq(ds []digest.Digest) map[digest.Digest]bool {
	m := map[digest.Digest]bool{}
	for _, d := range ds {
		m[d] = true
	}
	return m
}
