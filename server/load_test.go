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
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
	"github.com/bst-cache/bst-cache/server"
)

// loadCounts are what the load test saw.
type loadCounts struct {
	pushes, failedPushes, pulls, evictedPulls, holes, corrupt, looseWrites atomic.Int64
}

// The mix: 64 clients against serve under a 96 MiB quota, 24
// pushing artifacts, 24 pulling refs any of them pushed, and 16 writing
// blobs no ref ever names, for 20 s (BST_CACHE_LOAD_SECONDS=45 for the
// full run), with serve's default leases. The store starts 95% full of
// older refs, so eviction runs all along however slow the machine. Every
// artifact, older or pushed, is stored under two refs (its strong and its
// weak key), as BuildStream stores one. At most 1% of pushes fail, the store stays under 110% of its
// quota at every sample, a pull never finds a ref whose blobs are gone,
// and the refs pushed last are kept, whole.
func TestLoadUnderQuota(t *testing.T) {
	seconds := 20
	if s := os.Getenv("BST_CACHE_LOAD_SECONDS"); s != "" {
		fmt.Sscan(s, &seconds)
	}
	const quota = 96 << 20
	const pushers, pullers, looseWriters = 24, 24, 16
	dir := t.TempDir()
	store, err := cache.Open(dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	old := rand.NewChaCha8([32]byte{1})
	yesterday := time.Now().Add(-24 * time.Hour)
	const olds = quota / 20 * 19 / (1 << 20)
	for i := range olds {
		files := map[string][]byte{}
		for f := range 2 {
			files[fmt.Sprint("f", f)] = make([]byte, 512<<10)
			old.Read(files[fmt.Sprint("f", f)])
		}
		root, blobs := artifactTree(files)
		for d, b := range blobs {
			if err := store.PutBytes(d, b); err != nil {
				t.Fatal(err)
			}
			os.Chtimes(store.ObjectPath(d), yesterday, yesterday)
		}
		for _, key := range []string{"strong", "weak"} {
			ref := fmt.Sprintf("old/%d/%s", i, key)
			if err := store.SetRef(cache.KindBst1Artifact, ref, buildstream.V1RefContent(root)); err != nil {
				t.Fatal(err)
			}
			p, _ := store.RefPath(cache.KindBst1Artifact, ref)
			os.Chtimes(p, yesterday, yesterday)
		}
	}
	measured := make(chan struct{})
	logf := func(format string, args ...any) {
		if strings.HasPrefix(format, "quota: store measured") {
			close(measured)
		}
	}
	addr, _, _ := startServer(t, server.Options{Store: store, AllowWrites: true, Quota: quota, Logf: logf})
	select {
	case <-measured:
	case <-time.After(30 * time.Second):
		t.Fatal("the store was not measured in 30 s")
	}
	// Clients stop between operations at the end, never in the middle of
	// one.
	end := time.Now().Add(time.Duration(seconds) * time.Second)
	ctx := context.Background()

	// The store's size, sampled all along.
	var peak atomic.Int64
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for time.Now().Before(end) {
			var used int64
			store.WalkObjects(func(o cache.ObjectInfo) error { used += o.Digest.Size; return nil })
			if used > peak.Load() {
				peak.Store(used)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}()

	var c loadCounts
	var mu sync.Mutex
	var pushed []string
	shared := bytes.Repeat([]byte("shared by every push "), 1000)
	var wg sync.WaitGroup
	for i := range pushers + pullers + looseWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := dialRemote(t, addr)
			src := rand.NewChaCha8([32]byte{byte(i), 7})
			rng := rand.New(src)
			random := func(n int) []byte {
				b := make([]byte, n)
				src.Read(b)
				return b
			}
			for n := 0; time.Now().Before(end); n++ {
				switch {
				case i < pushers: // unique files and a shared one, then the ref
					files := map[string][]byte{"shared": shared}
					for f := range 3 {
						files[fmt.Sprint("f", f)] = random(8<<10 + rng.IntN(56<<10))
					}
					root, blobs := artifactTree(files)
					ref := fmt.Sprintf("demo/c%d-%d/strong", i, n)
					weak := fmt.Sprintf("demo/c%d-%d/weak", i, n)
					_, _, err := r.Upload(ctx, slices.Collect(maps.Keys(blobs)), testenv.MemoryOpener(blobs), 4)
					if err == nil {
						err = r.PushDirectory(ctx, []string{buildstream.URNBst1Artifact + ref, buildstream.URNBst1Artifact + weak}, root)
					}
					c.pushes.Add(1)
					if err != nil {
						c.failedPushes.Add(1)
						t.Logf("push %s: %v", ref, err)
						continue
					}
					mu.Lock()
					pushed = append(pushed, ref)
					mu.Unlock()
				case i < pushers+pullers: // a ref pushed by anyone, read back and checked
					mu.Lock()
					var ref string
					if len(pushed) > 0 {
						ref = pushed[rng.IntN(len(pushed))]
					}
					mu.Unlock()
					if ref == "" {
						time.Sleep(10 * time.Millisecond)
						continue
					}
					c.pulls.Add(1)
					switch err := readBack(ctx, r, ref); {
					case errors.Is(err, errEvicted):
						c.evictedPulls.Add(1)
					case errors.Is(err, remotes.ErrNotFound):
						c.holes.Add(1)
						t.Errorf("pull %s: %v", ref, err)
					case err != nil:
						c.corrupt.Add(1)
						t.Errorf("pull %s: %v", ref, err)
					}
				default: // a blob nobody will name
					b := random(4<<10 + rng.IntN(60<<10))
					d := digest.NewFromBlob(b)
					if _, _, err := r.Upload(ctx, []digest.Digest{d}, testenv.MemoryOpener(map[digest.Digest][]byte{d: b}), 1); err == nil {
						c.looseWrites.Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	<-sampled
	t.Logf("%d s, %d clients: %d pushes (%d failed), %d pulls (%d of refs since evicted, %d finding holes, %d failing), %d loose writes; store at most %d bytes (%d%% of the quota)",
		seconds, pushers+pullers+looseWriters, c.pushes.Load(), c.failedPushes.Load(), c.pulls.Load(), c.evictedPulls.Load(), c.holes.Load(), c.corrupt.Load(), c.looseWrites.Load(), peak.Load(), peak.Load()*100/quota)
	if f, n := c.failedPushes.Load(), c.pushes.Load(); n == 0 || f*100 > n {
		t.Errorf("%d of %d pushes failed: want at most 1%%", f, n)
	}
	if p := peak.Load(); p*10 > quota*11 {
		t.Errorf("the store reached %d bytes: want under 110%% of the %d-byte quota", p, quota)
	}
	// The refs pushed last are among the most recently used: kept, whole.
	refs, _ := store.ListRefs(cache.KindBst1Artifact, "")
	oldLeft, _ := store.ListRefs(cache.KindBst1Artifact, "old/*")
	t.Logf("after the load: %d refs left, %d of the %d older ones", len(refs), len(oldLeft), 2*olds)
	if len(oldLeft) == 2*olds {
		t.Errorf("no older ref was evicted: the load did not reach the quota")
	}
	r := dialRemote(t, addr)
	for _, ref := range pushed[max(len(pushed)-20, 0):] {
		if err := readBack(ctx, r, ref); err != nil {
			t.Errorf("ref %s, among the last pushed: %v", ref, err)
		}
	}
}

// errEvicted: the ref is no longer there (a pull's miss, not a hole).
var errEvicted = errors.New("ref evicted")

// readBack resolves a ref and reads every blob of its tree, verified:
// errEvicted when the ref is gone, remotes.ErrNotFound when blobs of it
// are.
func readBack(ctx context.Context, r *remotes.Remote, ref string) error {
	root, err := r.FetchDirectory(ctx, buildstream.URNBst1Artifact+ref)
	if errors.Is(err, remotes.ErrNotFound) {
		return fmt.Errorf("%s: %w", ref, errEvicted)
	}
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
