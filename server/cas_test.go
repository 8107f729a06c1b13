package server_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
	"github.com/bst-cache/bst-cache/server"
)

// startServer serves a fresh bst1 store on loopback in this process.
func startServer(t *testing.T, opts server.Options) (string, *cache.Store, *server.Server) {
	t.Helper()
	if opts.Store == nil {
		store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
		if err != nil {
			t.Fatal(err)
		}
		opts.Store = store
	}
	srv, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, srv), opts.Store, srv
}

// serveOn serves srv on loopback until the test ends, and returns where.
func serveOn(t *testing.T, srv *server.Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := server.NewGRPC(srv, server.GRPCOptions{})
	go g.Serve(l)
	t.Cleanup(func() { g.Stop(); srv.Close() })
	return l.Addr().String()
}

// startCAS serves a fresh store with writes enabled or not.
func startCAS(t *testing.T, allowWrites bool) (string, *cache.Store) {
	addr, store, _ := startServer(t, server.Options{AllowWrites: allowWrites})
	return addr, store
}

func dialRemote(t *testing.T, addr string) *remotes.Remote {
	t.Helper()
	r, err := remotes.Dial(context.Background(), config.Cache{
		Name: "serve", URL: "http://" + addr, Type: config.TypeStorage, MaxConcurrency: 4,
		Endpoint:   config.Endpoint{Target: addr},
		Connection: config.Connection{ConnectTimeout: 5 * time.Second, RequestTimeout: 30 * time.Second, RetryDelay: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestCASThroughRemotes(t *testing.T) {
	addr, store := startCAS(t, true)
	r := dialRemote(t, addr)
	ctx := context.Background()
	res := remotes.Probe(ctx, r, config.TypeStorage)
	if res.Status != remotes.StatusOK || !res.Caps.CAS || !res.Caps.BatchRead || !res.Caps.BatchUpdate || res.Caps.MaxBatchBytes != server.DefaultMaxBatchBytes {
		t.Fatalf("probe: %s %v %+v", res.Status, res.Err, res.Caps)
	}
	blobs := [][]byte{[]byte("a"), []byte("bb"), bytes.Repeat([]byte("c"), 100000), nil}
	byDigest := map[digest.Digest][]byte{}
	var ds []digest.Digest
	for _, b := range blobs {
		byDigest[digest.NewFromBlob(b)] = b
		ds = append(ds, digest.NewFromBlob(b))
	}
	if _, _, err := r.Upload(ctx, ds, testenv.MemoryOpener(byDigest), 4); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if err := store.Verify(d); err != nil {
			t.Errorf("uploaded blob %s: %v", d, err)
		}
	}
	absent := digest.NewFromBlob([]byte("absent"))
	missing, err := r.FindMissing(ctx, append(ds, absent))
	if err != nil || len(missing) != 1 || missing[0] != absent {
		t.Errorf("FindMissing = %v, %v", missing, err)
	}
	found, notThere, err := r.BatchRead(ctx, append(ds, absent))
	if err != nil || len(found) != len(ds) || len(notThere) != 1 {
		t.Errorf("BatchRead: %d found, missing %v, %v", len(found), notThere, err)
	}
}

func TestCASRejectsBadInput(t *testing.T) {
	addr, store := startCAS(t, true)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cas := repb.NewContentAddressableStorageClient(cc)
	ctx := context.Background()

	good := digest.NewFromBlob([]byte("right"))
	resp, err := cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: good.ToProto(), Data: []byte("wrong")},
		{Digest: &repb.Digest{Hash: "../../etc", SizeBytes: 1}, Data: []byte("x")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.GetResponses() {
		if codes.Code(r.GetStatus().GetCode()) != codes.InvalidArgument {
			t.Errorf("blob %v: status %v; want INVALID_ARGUMENT", r.GetDigest(), r.GetStatus())
		}
	}
	if ok, _ := store.Has(good); ok {
		t.Error("a blob whose data did not match its digest was stored")
	}
	if _, err := cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{{Hash: "zz", SizeBytes: -1}}}); statusCode(err) != codes.InvalidArgument {
		t.Errorf("FindMissingBlobs with a bad digest: %v", err)
	}
	huge := &repb.Digest{Hash: good.Hash, SizeBytes: 1 << 40}
	if _, err := cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{huge}}); statusCode(err) != codes.InvalidArgument {
		t.Errorf("BatchReadBlobs of an absurd size: %v", err)
	}

	roAddr, _ := startCAS(t, false)
	r := dialRemote(t, roAddr)
	// Small blobs go in a batch, one larger than any batch through ByteStream.
	for _, blob := range [][]byte{[]byte("x"), bytes.Repeat([]byte("y"), 2*server.DefaultMaxBatchBytes)} {
		d := digest.NewFromBlob(blob)
		_, _, err = r.Upload(ctx, []digest.Digest{d}, testenv.MemoryOpener(map[digest.Digest][]byte{d: blob}), 1)
		var re *remotes.Error
		if !errors.As(err, &re) || re.Code != codes.PermissionDenied {
			t.Errorf("upload of %d bytes to a read-only server: %v; want PERMISSION_DENIED", len(blob), err)
		}
	}
}

func statusCode(err error) codes.Code { return status.Code(err) }
