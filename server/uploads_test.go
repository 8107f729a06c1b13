package server_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/server"
)

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(entries)
}

// abandon starts an upload of one byte of a 1 KiB blob and goes away
// without finishing it, once the server has the byte.
func abandon(ctx context.Context, c clients, i int) error {
	data := []byte(fmt.Sprintf("%01024d", i))
	d := digest.NewFromBlob(data)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.bs.Write(cctx)
	if err != nil {
		return err
	}
	name := fmt.Sprintf("uploads/%08d-0000-0000-0000-000000000000/blobs/%s/%d", i, d.Hash, d.Size)
	if err := s.Send(&bsgrpc.WriteRequest{ResourceName: name, Data: data[:1]}); err != nil {
		return err
	}
	_, err = s.CloseAndRecv() // the server has seen the byte and kept the upload
	return err
}

// 25,000 abandoned uploads hold no file descriptors and a bounded number
// of parked files, and a real push still succeeds; it used to take a
// descriptor each for 15 minutes and block every uploader.
func TestAbandonedUploadsAreBounded(t *testing.T) {
	dir := t.TempDir()
	store, err := cache.Open(dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	limits := server.DefaultUploadLimits(0)
	addr, _, _ := startServer(t, server.Options{Store: store, AllowWrites: true})
	c := connect(t, addr)
	before := openFDs(t)

	const n = 25000
	var wg sync.WaitGroup
	work := make(chan int)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				abandon(context.Background(), c, i)
			}
		}()
	}
	start := time.Now()
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	t.Logf("%d abandoned uploads in %s", n, time.Since(start).Round(time.Millisecond))

	// Let the server notice the last cancellations.
	deadline := time.Now().Add(10 * time.Second)
	for openFDs(t) > before+64 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if fds := openFDs(t); fds > before+64 {
		t.Errorf("%d file descriptors open after the abandoned uploads, %d before", fds, before)
	}
	parked, _ := filepath.Glob(filepath.Join(dir, "tmp", "upload-*"))
	// Every upload came from one peer: its own limit applies.
	if len(parked) != limits.PeerParked {
		t.Errorf("%d parked upload files; want the per-peer limit, %d, kept (the oldest discarded)", len(parked), limits.PeerParked)
	}

	// A real push: a Directory and its file through the remotes layer.
	r := dialRemote(t, addr)
	root, blobs := artifactTree(map[string][]byte{"f": []byte("real content")})
	if _, _, err := r.Upload(context.Background(), digestsOfMap(blobs), testenv.MemoryOpener(blobs), 4); err != nil {
		t.Fatalf("upload after the abandoned ones: %v", err)
	}
	if err := r.PushDirectory(context.Background(), []string{buildstream.URNBst1Artifact + "demo/real/key"}, root); err != nil {
		t.Fatalf("push after the abandoned ones: %v", err)
	}
}

// Past the active limit a new upload is refused with RESOURCE_EXHAUSTED;
// an interrupted upload is parked without a file and resumed where it
// stopped.
func TestUploadLimitsAndResume(t *testing.T) {
	addr, store, _ := startServer(t, server.Options{AllowWrites: true, UploadLimits: &server.UploadLimits{Active: 1, PeerActive: 1, Parked: 8, PeerParked: 8, ParkedBytes: 1 << 20}})
	c := connect(t, addr)
	ctx := context.Background()
	data := []byte("0123456789abcdef")
	d := digest.NewFromBlob(data)
	name := "uploads/11111111-0000-0000-0000-000000000000/blobs/" + d.Hash + "/16"

	// One stream holds the only active slot.
	held, err := c.bs.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := held.Send(&bsgrpc.WriteRequest{ResourceName: name, Data: data[:4]}); err != nil {
		t.Fatal(err)
	}
	waitCommitted(t, c, name, 4)
	other := digest.NewFromBlob([]byte("other"))
	err = write(ctx, c, "uploads/22222222-0000-0000-0000-000000000000/blobs/"+other.Hash+"/5", 0, [][]byte{[]byte("other")}, true)
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a second upload past the active limit: %v; want RESOURCE_EXHAUSTED", err)
	}
	// The first stream breaks off: parked; then resumed to the end.
	held.CloseSend()
	held.CloseAndRecv()
	waitCommitted(t, c, name, 4)
	if err := write(ctx, c, name, 4, [][]byte{data[4:]}, true); err != nil {
		t.Fatalf("resuming the parked upload: %v", err)
	}
	if ok, _ := store.Has(d); !ok {
		t.Error("the resumed upload was not stored")
	}
}

func waitCommitted(t *testing.T, c clients, name string, want int64) {
	t.Helper()
	for range 100 {
		resp, err := c.bs.QueryWriteStatus(context.Background(), &bsgrpc.QueryWriteStatusRequest{ResourceName: name})
		if err == nil && resp.GetCommittedSize() == want {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never reached %d committed bytes", name, want)
}

func digestsOfMap(m map[digest.Digest][]byte) []digest.Digest {
	var out []digest.Digest
	for d := range m {
		out = append(out, d)
	}
	return out
}
