package commands_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
)

// serve stopped by SIGTERM while 8 clients push (BuildStream 1's
// UpdateReference) starts again with nothing lost: every ref a client was
// told was stored is served whole after the restart, and every object
// matches its name. And nothing that did not change is verified again at
// start-up: a Directory changed on disk between the runs (same size,
// still a Directory) goes unnoticed until a client asks for its ref, which
// is then not found (the read hashes it).
func TestServeRestartUnderWrites(t *testing.T) {
	opts := testenv.ServeOptions{Push: true, Dir: t.TempDir() + "/repo", Port: testenv.FreePort(t), Args: []string{"--quota", "1G"}}
	srv := testenv.StartServe(t, opts)
	dial := func() *remotes.Remote {
		r, err := remotes.Dial(context.Background(), config.Cache{Name: "serve", URL: srv.URL(), Type: config.TypeAll, MaxConcurrency: 2,
			Endpoint:   config.Endpoint{Target: srv.Addr},
			Connection: config.Connection{ConnectTimeout: 5 * time.Second, RequestTimeout: 30 * time.Second, RetryDelay: 50 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r
	}
	type pushed struct {
		root  digest.Digest
		blobs map[digest.Digest][]byte
	}
	var mu sync.Mutex
	acked := map[string]pushed{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := dial()
			rng := rand.New(rand.NewPCG(uint64(i), 21))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				dir := &repb.Directory{}
				blobs := map[digest.Digest][]byte{}
				for f := range 3 {
					b := make([]byte, 1<<10+rng.IntN(31<<10))
					for k := range b {
						b[k] = byte(rng.Uint32())
					}
					d := digest.NewFromBlob(b)
					blobs[d] = b
					dir.Files = append(dir.Files, &repb.FileNode{Name: fmt.Sprint("f", f), Digest: d.ToProto()})
				}
				data, _ := proto.Marshal(dir)
				root := digest.NewFromBlob(data)
				blobs[root] = data
				ref := fmt.Sprintf("demo/w%d/%d", i, n)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, _, err := r.Upload(ctx, slices.Collect(maps.Keys(blobs)), testenv.MemoryOpener(blobs), 2)
				if err == nil {
					err = r.UpdateReference(ctx, []string{ref}, root)
				}
				cancel()
				if err == nil {
					mu.Lock()
					acked[ref] = pushed{root, blobs}
					mu.Unlock()
				}
			}
		}()
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 40 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d refs pushed in 30 s:\n%s", n, srv.Log())
		}
	}
	srv.Stop() // SIGTERM, with pushes in flight
	close(stop)
	wg.Wait()

	// One acknowledged ref's root Directory changes on disk: a digit of a
	// file's hash.
	store, err := cache.OpenReadOnly(opts.Dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	var changed string
	for ref := range acked {
		changed = ref
		break
	}
	p := store.ObjectPath(acked[changed].root)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var fileHash string
	for d := range acked[changed].blobs {
		if d != acked[changed].root {
			fileHash = d.Hash
			break
		}
	}
	swapped := map[byte]byte{'0': '1'}[fileHash[0]]
	if swapped == 0 {
		swapped = '0'
	}
	changedData := bytes.Replace(data, []byte(fileHash), []byte(string(swapped)+fileHash[1:]), 1)
	if bytes.Equal(changedData, data) {
		t.Fatal("the Directory does not name its file")
	}
	if err := os.WriteFile(p, changedData, 0o644); err != nil {
		t.Fatal(err)
	}

	srv = testenv.StartServe(t, opts)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		log := srv.Log()
		if strings.Contains(log, acked[changed].root.Hash) || strings.Contains(log, "unreadable") {
			t.Fatalf("serve verified Directories again at start-up:\n%s", log)
		}
		if strings.Contains(log, "store measured") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted serve did not measure its store:\n%s", log)
		}
	}
	r := dial()
	ctx := context.Background()
	for ref, want := range acked {
		root, err := r.GetReference(ctx, ref)
		if ref == changed {
			if err == nil {
				t.Errorf("%s, whose Directory changed on disk, is served as %s", ref, root)
			}
			continue
		}
		if err != nil || root != want.root {
			t.Errorf("%s after the restart: %s, %v; want %s", ref, root, err, want.root)
			continue
		}
		found, missing, err := r.BatchRead(ctx, slices.Collect(maps.Keys(want.blobs)))
		if err != nil || len(missing) > 0 {
			t.Errorf("%s after the restart: %d blobs missing, %v", ref, len(missing), err)
		}
		for d, b := range found {
			if !bytes.Equal(b, want.blobs[d]) {
				t.Errorf("%s: blob %s differs", ref, d)
			}
		}
	}
	err = store.WalkObjects(func(o cache.ObjectInfo) error {
		if o.Digest == acked[changed].root {
			return nil
		}
		return store.Verify(o.Digest)
	})
	if err != nil {
		t.Errorf("an object does not match its name: %v", err)
	}
	t.Logf("%d refs acknowledged before SIGTERM, all served after the restart", len(acked))
}
