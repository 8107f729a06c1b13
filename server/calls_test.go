package server_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/tokenfile"
	"github.com/bst-cache/bst-cache/server"
)

// What each call's record says: instance (from the request, or a
// ByteStream resource name), message bytes both ways (summed over a
// stream), refs (bounded, with their count), FindMissingBlobs' counts,
// the client's RequestMetadata, and the code of a call refused for its
// token.
func TestCallRecords(t *testing.T) {
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{Store: store, AllowWrites: true, InstanceNames: []string{"", "inst"}})
	if err != nil {
		t.Fatal(err)
	}
	tokPath := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokPath, []byte("tok\n"), 0o600)
	tok, err := tokenfile.Open(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var calls []server.Call
	g := server.NewGRPC(srv, server.GRPCOptions{Token: tok, OnCall: []func(*server.Call){func(c *server.Call) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, *c)
	}}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	t.Cleanup(func() { g.Stop(); srv.Close() })
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	rm, _ := proto.Marshal(&repb.RequestMetadata{ToolDetails: &repb.ToolDetails{ToolName: "bst", ToolVersion: "2.4"}, ToolInvocationId: "run-1"})
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer tok",
		"build.bazel.remote.execution.v2.requestmetadata-bin", string(rm))

	blob := []byte(strings.Repeat("x", 300_000))
	d := digest.NewFromBlob(blob)
	w, err := bsgrpc.NewByteStreamClient(cc).Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	name := "inst/uploads/0b2b0d4a-6d3b-4c39-9a41-1c7a5f6f0a11/blobs/" + d.Hash + "/" + strconv.FormatInt(d.Size, 10)
	var sent int64
	for off := 0; off < len(blob); off += 100_000 {
		req := &bsgrpc.WriteRequest{Data: blob[off : off+100_000], WriteOffset: int64(off), FinishWrite: off+100_000 == len(blob)}
		if off == 0 {
			req.ResourceName = name
		}
		sent += int64(proto.Size(req))
		if err := w.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	missing := digest.NewFromBlob([]byte("absent"))
	if _, err := repb.NewContentAddressableStorageClient(cc).FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
		InstanceName: "inst", BlobDigests: []*repb.Digest{d.ToProto(), missing.ToProto(), d.ToProto()},
	}); err != nil {
		t.Fatal(err)
	}
	var uris []string
	for i := range server.MaxCallRefs + 2 {
		uris = append(uris, fmt.Sprintf("urn:fdc:buildstream.build:2020:v1:p/e/%d\n\"quoted\"", i))
	}
	repb.NewContentAddressableStorageClient(cc).FindMissingBlobs(context.Background(), &repb.FindMissingBlobsRequest{InstanceName: "inst"})
	assetpb.NewFetchClient(cc).FetchDirectory(ctx, &assetpb.FetchDirectoryRequest{Uris: uris})

	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 4 {
		t.Fatalf("%d calls recorded, want 4: %+v", len(calls), calls)
	}
	write, find, refused, fetch := calls[0], calls[1], calls[2], calls[3]
	if write.Method != "/google.bytestream.ByteStream/Write" || write.Instance != "inst" || write.Code != codes.OK || write.BytesIn != sent || write.BytesOut == 0 || write.BytesOut > 16 {
		t.Errorf("write: %+v; want instance inst, OK, %d bytes in, a few out", write, sent)
	}
	if write.Tool != "bst" || write.ToolVersion != "2.4" || write.Invocation != "run-1" || !strings.HasPrefix(write.Peer, "127.0.0.1:") {
		t.Errorf("write: tool %q %q %q from %q", write.Tool, write.ToolVersion, write.Invocation, write.Peer)
	}
	if find.Asked != 3 || find.Missing != 1 || find.Instance != "inst" {
		t.Errorf("FindMissingBlobs: %d asked, %d missing, instance %q; want 3, 1, inst", find.Asked, find.Missing, find.Instance)
	}
	if refused.Code != codes.Unauthenticated || refused.Instance != "inst" || refused.Tool != "" {
		t.Errorf("a call without a token: %+v", refused)
	}
	if fetch.Code == codes.OK || fetch.RefCount != len(uris) || len(fetch.Refs) != server.MaxCallRefs || fetch.Refs[0] != uris[0] {
		t.Errorf("FetchDirectory: %s, %d refs kept of %d: %q", fetch.Code, len(fetch.Refs), fetch.RefCount, fetch.Refs)
	}
	// In the access log, a URI with a newline and quotes stays on its
	// line, escaped.
	logPath := filepath.Join(t.TempDir(), "access.log")
	alog, err := server.OpenAccessLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	alog.Log(&fetch)
	if err := alog.Close(); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(logPath)
	if lines := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n"); len(lines) != 1 || !strings.Contains(lines[0], `p/e/0\n\"quoted\"`) || !strings.Contains(lines[0], `"ref_count":10`) {
		t.Errorf("access log: %q", raw)
	}
}
