package server_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/server"
)

// artifactTree builds a root Directory over files and returns its digest
// and every blob.
func artifactTree(files map[string][]byte) (digest.Digest, map[digest.Digest][]byte) {
	blobs := map[digest.Digest][]byte{}
	dir := &repb.Directory{}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		d := digest.NewFromBlob(files[name])
		blobs[d] = files[name]
		dir.Files = append(dir.Files, &repb.FileNode{Name: name, Digest: d.ToProto()})
	}
	data, _ := proto.Marshal(dir)
	root := digest.NewFromBlob(data)
	blobs[root] = data
	return root, blobs
}

// 32 clients push and pull overlapping content at once, through the serve
// binary and through a server in this process (where -race sees the
// server's own goroutines); afterwards every ref's closure is complete and
// every object matches its digest.
func TestConcurrentClients(t *testing.T) {
	t.Run("binary", func(t *testing.T) {
		srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
		concurrentClients(t, srv.Addr, srv.Dir)
	})
	t.Run("in-process", func(t *testing.T) {
		dir := t.TempDir()
		store, err := cache.Open(dir, cache.KindBst1Artifact)
		if err != nil {
			t.Fatal(err)
		}
		addr, _, _ := startServer(t, server.Options{Store: store, AllowWrites: true})
		concurrentClients(t, addr, dir)
	})
}

func concurrentClients(t *testing.T, addr, dir string) {
	shared := map[string][]byte{
		"shared-small": []byte("shared by everyone"),
		"shared-big":   bytes.Repeat([]byte("big shared blob "), 1<<18), // 4 MiB: ByteStream
	}
	const clients = 32
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- func() error {
				ctx := context.Background()
				r := dialRemote(t, addr)
				files := map[string][]byte{
					"own":  []byte(fmt.Sprintf("client %d", i)),
					"half": []byte(fmt.Sprintf("group %d", i%2)),
					"mid":  bytes.Repeat([]byte{byte(i)}, 200000),
				}
				for k, v := range shared {
					files[k] = v
				}
				root, blobs := artifactTree(files)
				if _, _, err := r.Upload(ctx, slices.Collect(maps.Keys(blobs)), testenv.MemoryOpener(blobs), 4); err != nil {
					return fmt.Errorf("client %d upload: %w", i, err)
				}
				// Everyone names the same shared ref (last writer wins, all
				// complete) and a ref of their own, through both APIs.
				own := fmt.Sprintf("demo/client/%d", i)
				if i%2 == 0 {
					if err := r.PushDirectory(ctx, []string{buildstream.URNBst1Artifact + own}, root); err != nil {
						return fmt.Errorf("client %d PushDirectory: %w", i, err)
					}
				} else if err := r.UpdateReference(ctx, []string{own}, root); err != nil {
					return fmt.Errorf("client %d UpdateReference: %w", i, err)
				}
				if err := r.UpdateReference(ctx, []string{"demo/shared/k"}, root); err != nil {
					return fmt.Errorf("client %d shared ref: %w", i, err)
				}
				// Pull back another client's ref if it is there yet.
				other := fmt.Sprintf("demo/client/%d", (i+1)%clients)
				got, err := r.FetchDirectory(ctx, buildstream.URNBst1Artifact+other)
				if err != nil {
					got = root
				}
				dirs, err := r.GetTree(ctx, got)
				if err != nil || len(dirs) != 1 {
					return fmt.Errorf("client %d GetTree: %d dirs, %v", i, len(dirs), err)
				}
				store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
				if err != nil {
					return err
				}
				for _, f := range dirs[0].GetFiles() {
					d := digest.NewFromProtoUnvalidated(f.GetDigest())
					w, err := store.NewWriter(d)
					if err != nil {
						return err
					}
					if err := r.ReadBlob(ctx, d, w); err != nil {
						w.Abort()
						return fmt.Errorf("client %d reading %s: %w", i, f.GetName(), err)
					}
					if err := w.Commit(); err != nil {
						return fmt.Errorf("client %d reading %s: %w", i, f.GetName(), err)
					}
				}
				return nil
			}()
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}

	layout, _ := cache.DetectLayout(dir)
	store, err := cache.Open(dir, layout)
	if err != nil {
		t.Fatal(err)
	}
	refs, err := store.ListRefs(cache.KindBst1Artifact, "")
	if err != nil || len(refs) != clients+1 {
		t.Fatalf("%d refs on the server, %v; want %d", len(refs), err, clients+1)
	}
	for _, ref := range refs {
		data, _ := store.GetRef(cache.KindBst1Artifact, ref.Name)
		var d repb.Digest
		if err := proto.Unmarshal(data, &d); err != nil {
			t.Fatalf("ref %s: %v", ref.Name, err)
		}
		_, missing, err := store.Closure(digest.NewFromProtoUnvalidated(&d))
		if err != nil || len(missing) > 0 {
			t.Errorf("ref %s: missing %v, %v", ref.Name, missing, err)
		}
	}
	n := 0
	if err := store.WalkObjects(func(o cache.ObjectInfo) error {
		n++
		return store.Verify(o.Digest)
	}); err != nil {
		t.Errorf("after concurrent writes: %v", err)
	}
	// Shared blobs are stored once: 32 own + 2 half + 32 mid + 2 shared
	// + 32 roots + the empty blob.
	if want := clients + 2 + clients + len(shared) + clients + 1; n != want {
		t.Errorf("%d objects on the server; want %d", n, want)
	}
}
