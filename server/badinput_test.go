package server_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
	"github.com/bst-cache/bst-cache/server"
)

// clients are raw gRPC stubs, for requests the remotes layer never sends.
type clients struct {
	cas   repb.ContentAddressableStorageClient
	caps  repb.CapabilitiesClient
	bs    bsgrpc.ByteStreamClient
	fetch assetpb.FetchClient
	push  assetpb.PushClient
	refs  bspb.ReferenceStorageClient
	conn  *grpc.ClientConn
}

func connect(t *testing.T, addr string) clients {
	t.Helper()
	c, err := connectRaw(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.conn.Close() })
	return c
}

// connectRaw is connect for code outside the test's goroutine; the caller
// closes conn.
func connectRaw(addr string) (clients, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return clients{}, err
	}
	return clients{repb.NewContentAddressableStorageClient(cc), repb.NewCapabilitiesClient(cc), bsgrpc.NewByteStreamClient(cc),
		assetpb.NewFetchClient(cc), assetpb.NewPushClient(cc), bspb.NewReferenceStorageClient(cc), cc}, nil
}

// write sends one ByteStream write of data in chunks and returns the error.
func write(ctx context.Context, c clients, name string, off int64, chunks [][]byte, finish bool) error {
	s, err := c.bs.Write(ctx)
	if err != nil {
		return err
	}
	for i, ch := range chunks {
		req := &bsgrpc.WriteRequest{WriteOffset: off, Data: ch, FinishWrite: finish && i == len(chunks)-1}
		if i == 0 {
			req.ResourceName = name
		}
		if err := s.Send(req); err != nil {
			break // the server closed the stream; CloseAndRecv has its status
		}
		off += int64(len(ch))
	}
	_, err = s.CloseAndRecv()
	return err
}

func read(ctx context.Context, c clients, name string, off, limit int64) ([]byte, error) {
	s, err := c.bs.Read(ctx, &bsgrpc.ReadRequest{ResourceName: name, ReadOffset: off, ReadLimit: limit})
	if err != nil {
		return nil, err
	}
	var out []byte
	for {
		resp, err := s.Recv()
		if err != nil {
			if status.Code(err) == codes.OK || err.Error() == "EOF" {
				return out, nil
			}
			return out, err
		}
		out = append(out, resp.GetData()...)
	}
}

func blobName(d digest.Digest) string { return fmt.Sprintf("blobs/%s/%d", d.Hash, d.Size) }
func uploadName(d digest.Digest) string {
	return fmt.Sprintf("uploads/0b8a1b5e-1c7d-4e0e-9d4e-7c2f2d0e5a11/blobs/%s/%d", d.Hash, d.Size)
}

func TestByteStream(t *testing.T) {
	addr, store, _ := startServer(t, server.Options{AllowWrites: true, InstanceNames: []string{"", "main/x"}})
	c := connect(t, addr)
	ctx := context.Background()
	data := []byte(strings.Repeat("0123456789", 300000)) // 3 MB: several chunks
	d := digest.NewFromBlob(data)

	// Resumable upload: the first stream dies half way; the client asks
	// how far it got and finishes from there.
	half := len(data) / 2
	cctx, cancel := context.WithCancel(ctx)
	s, err := c.bs.Write(cctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&bsgrpc.WriteRequest{ResourceName: "main/x/" + uploadName(d), Data: data[:half]}); err != nil {
		t.Fatal(err)
	}
	var committed int64
	for i := 0; i < 100; i++ {
		q, err := c.bs.QueryWriteStatus(ctx, &bsgrpc.QueryWriteStatusRequest{ResourceName: "main/x/" + uploadName(d)})
		if err == nil && q.GetCommittedSize() == int64(half) {
			committed = q.GetCommittedSize()
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if committed != int64(half) {
		t.Fatalf("QueryWriteStatus never reported %d committed bytes", half)
	}
	if ok, _ := store.Has(d); ok {
		t.Fatal("a half-written blob is visible")
	}
	time.Sleep(50 * time.Millisecond) // let the server see the cancellation
	if err := write(ctx, c, "main/x/"+uploadName(d), committed, [][]byte{data[half:]}, true); err != nil {
		t.Fatalf("resuming the upload: %v", err)
	}
	if err := store.Verify(d); err != nil {
		t.Fatalf("resumed upload: %v", err)
	}
	q, err := c.bs.QueryWriteStatus(ctx, &bsgrpc.QueryWriteStatusRequest{ResourceName: uploadName(d)})
	if err != nil || !q.GetComplete() || q.GetCommittedSize() != d.Size {
		t.Errorf("QueryWriteStatus of a stored blob = %v, %v", q, err)
	}

	// Reads with offsets and limits.
	for _, tc := range []struct{ off, limit int64 }{{0, 0}, {1, 0}, {12345, 10}, {d.Size - 1, 0}, {d.Size, 0}, {0, d.Size + 5}} {
		got, err := read(ctx, c, "main/x/"+blobName(d), tc.off, tc.limit)
		end := d.Size
		if tc.limit > 0 && tc.off+tc.limit < end {
			end = tc.off + tc.limit
		}
		if err != nil || string(got) != string(data[tc.off:end]) {
			t.Errorf("Read offset %d limit %d: %d bytes, %v; want %d", tc.off, tc.limit, len(got), err, end-tc.off)
		}
	}
}

func TestBadInput(t *testing.T) {
	addr, store, _ := startServer(t, server.Options{AllowWrites: true})
	c := connect(t, addr)
	ctx := context.Background()
	good := []byte("good data")
	gd := digest.NewFromBlob(good)
	wrongHash := digest.NewFromBlob([]byte("other"))
	absurd := digest.Digest{Hash: gd.Hash, Size: 1 << 62}
	var missingDetails *errdetails.PreconditionFailure

	cases := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"Read: empty name", func() error { _, err := read(ctx, c, "", 0, 0); return err }, codes.InvalidArgument},
		{"Read: no blobs component", func() error { _, err := read(ctx, c, "foo/bar/baz", 0, 0); return err }, codes.InvalidArgument},
		{"Read: bad hash", func() error { _, err := read(ctx, c, "blobs/xyz/1", 0, 0); return err }, codes.InvalidArgument},
		{"Read: size not a number", func() error { _, err := read(ctx, c, "blobs/"+gd.Hash+"/ten", 0, 0); return err }, codes.InvalidArgument},
		{"Read: negative size", func() error { _, err := read(ctx, c, "blobs/"+gd.Hash+"/-1", 0, 0); return err }, codes.InvalidArgument},
		{"Read: unknown compressor", func() error { _, err := read(ctx, c, "compressed-blobs/deflate/"+gd.Hash+"/9", 0, 0); return err }, codes.InvalidArgument},
		{"Read: compressed with a limit", func() error { _, err := read(ctx, c, "compressed-blobs/zstd/"+gd.Hash+"/9", 0, 3); return err }, codes.InvalidArgument},
		{"Read: absent", func() error { _, err := read(ctx, c, blobName(gd), 0, 0); return err }, codes.NotFound},
		{"Read: offset past the end", func() error { _, err := read(ctx, c, blobName(gd), 10, 0); return err }, codes.OutOfRange},
		{"Read: negative limit", func() error { _, err := read(ctx, c, blobName(gd), 0, -1); return err }, codes.InvalidArgument},
		{"Read: unknown instance", func() error { _, err := read(ctx, c, "nope/"+blobName(gd), 0, 0); return err }, codes.InvalidArgument},
		{"Write: malformed name", func() error { return write(ctx, c, "uploads/blobs/"+gd.Hash+"/9", 0, [][]byte{good}, true) }, codes.InvalidArgument},
		{"Write: read name", func() error { return write(ctx, c, blobName(gd), 0, [][]byte{good}, true) }, codes.InvalidArgument},
		{"Write: data does not match the hash", func() error {
			return write(ctx, c, uploadName(digest.Digest{Hash: wrongHash.Hash, Size: gd.Size}), 0, [][]byte{good}, true)
		}, codes.InvalidArgument},
		{"Write: fewer bytes than the size", func() error { return write(ctx, c, uploadName(gd), 0, [][]byte{good[:4]}, true) }, codes.InvalidArgument},
		{"Write: past the declared size", func() error { return write(ctx, c, uploadName(gd), 0, [][]byte{good, []byte("more")}, true) }, codes.InvalidArgument},
		{"Write: absurd size", func() error { return write(ctx, c, uploadName(absurd), 0, [][]byte{good}, true) }, codes.ResourceExhausted},
		{"Write: offset without an upload", func() error { return write(ctx, c, uploadName(gd), 5, [][]byte{good[5:]}, true) }, codes.InvalidArgument},
		{"Write: no finish_write", func() error { return write(ctx, c, uploadName(gd), 0, [][]byte{good}, false) }, codes.InvalidArgument},
		{"Write: unknown instance", func() error { return write(ctx, c, "nope/"+uploadName(gd), 0, [][]byte{good}, true) }, codes.InvalidArgument},
		{"QueryWriteStatus: unknown upload", func() error {
			_, err := c.bs.QueryWriteStatus(ctx, &bsgrpc.QueryWriteStatusRequest{ResourceName: uploadName(wrongHash)})
			return err
		}, codes.NotFound},
		{"UpdateReference: .. in the ref", func() error {
			_, err := c.refs.UpdateReference(ctx, &bspb.UpdateReferenceRequest{Keys: []string{"demo/../../etc/passwd"}, Digest: digest.Empty.ToProto()})
			return err
		}, codes.InvalidArgument},
		{"UpdateReference: absolute ref", func() error {
			_, err := c.refs.UpdateReference(ctx, &bspb.UpdateReferenceRequest{Keys: []string{"/etc/passwd"}, Digest: digest.Empty.ToProto()})
			return err
		}, codes.InvalidArgument},
		{"GetReference: .. in the ref", func() error {
			_, err := c.refs.GetReference(ctx, &bspb.GetReferenceRequest{Key: "a/../b"})
			return err
		}, codes.InvalidArgument},
		{"GetReference: unknown instance", func() error {
			_, err := c.refs.GetReference(ctx, &bspb.GetReferenceRequest{InstanceName: "nope", Key: "a/b"})
			return err
		}, codes.InvalidArgument},
		{"PushDirectory: .. in the URN", func() error {
			_, err := c.push.PushDirectory(ctx, &assetpb.PushDirectoryRequest{Uris: []string{buildstream.URNBst1Artifact + "../x"}, RootDirectoryDigest: digest.Empty.ToProto()})
			return err
		}, codes.InvalidArgument},
		{"PushDirectory: no URIs", func() error {
			_, err := c.push.PushDirectory(ctx, &assetpb.PushDirectoryRequest{RootDirectoryDigest: digest.Empty.ToProto()})
			return err
		}, codes.InvalidArgument},
		{"PushDirectory: root the server lacks", func() error {
			_, err := c.push.PushDirectory(ctx, &assetpb.PushDirectoryRequest{Uris: []string{buildstream.URNBst1Artifact + "p/e/k"}, RootDirectoryDigest: wrongHash.ToProto()})
			for _, d := range status.Convert(err).Details() {
				if pf, ok := d.(*errdetails.PreconditionFailure); ok {
					missingDetails = pf
				}
			}
			return err
		}, codes.FailedPrecondition},
		{"PushBlob: a reference the server lacks", func() error {
			_, err := c.push.PushBlob(ctx, &assetpb.PushBlobRequest{Uris: []string{"https://example.com/x"}, BlobDigest: digest.Empty.ToProto(), ReferencesBlobs: []*repb.Digest{wrongHash.ToProto()}})
			return err
		}, codes.FailedPrecondition},
		{"PushBlob: an Artifact that does not parse", func() error {
			junk := []byte{0xff, 0xff, 0xff}
			if _, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: digest.NewFromBlob(junk).ToProto(), Data: junk}}}); err != nil {
				return err
			}
			_, err := c.push.PushBlob(ctx, &assetpb.PushBlobRequest{Uris: []string{buildstream.URNBst2Artifact + "p/e/k"}, BlobDigest: digest.NewFromBlob(junk).ToProto()})
			return err
		}, codes.InvalidArgument},
		{"FetchBlob: unknown instance", func() error {
			_, err := c.fetch.FetchBlob(ctx, &assetpb.FetchBlobRequest{InstanceName: "nope", Uris: []string{"x"}})
			return err
		}, codes.InvalidArgument},
		{"FindMissingBlobs: bad digest", func() error {
			_, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{{Hash: "../../x", SizeBytes: 1}}})
			return err
		}, codes.InvalidArgument},
		{"GetTree: bad page token", func() error {
			s, err := c.cas.GetTree(ctx, &repb.GetTreeRequest{RootDigest: digest.Empty.ToProto(), PageToken: "x"})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		}, codes.InvalidArgument},
		{"GetCapabilities: unknown instance", func() error {
			_, err := c.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{InstanceName: "nope"})
			return err
		}, codes.InvalidArgument},
	}
	for _, tc := range cases {
		err := tc.call()
		if status.Code(err) != tc.want {
			t.Errorf("%s: %v; want %s", tc.name, err, tc.want)
		} else if msg := status.Convert(err).Message(); len(msg) < 10 {
			t.Errorf("%s: the message %q does not say what is wrong", tc.name, msg)
		}
	}
	if missingDetails == nil || len(missingDetails.GetViolations()) != 1 || missingDetails.GetViolations()[0].GetSubject() != "blobs/"+wrongHash.Hash+"/"+fmt.Sprint(wrongHash.Size) {
		t.Errorf("FAILED_PRECONDITION details = %v; want the missing root listed", missingDetails)
	}

	// Nothing was stored, no ref was written, and the server still answers.
	if ok, _ := store.Has(gd); ok {
		t.Error("a rejected upload was stored")
	}
	for _, kind := range cache.Kinds {
		if refs, err := store.ListRefs(kind, ""); err != nil || len(refs) != 0 {
			t.Errorf("%s refs after bad input: %v, %v", kind, refs, err)
		}
	}
	if _, err := c.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); err != nil {
		t.Errorf("the server stopped answering: %v", err)
	}
	if err := write(ctx, c, uploadName(gd), 0, [][]byte{good}, true); err != nil {
		t.Errorf("a good upload after bad ones: %v", err)
	}
}

func TestReadOnlyRefusesEveryWrite(t *testing.T) {
	addr, _, _ := startServer(t, server.Options{})
	c := connect(t, addr)
	ctx := context.Background()
	good := []byte("good data")
	gd := digest.NewFromBlob(good)
	for name, call := range map[string]func() error{
		"Write": func() error { return write(ctx, c, uploadName(gd), 0, [][]byte{good}, true) },
		"BatchUpdateBlobs": func() error {
			_, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{})
			return err
		},
		"PushDirectory": func() error {
			_, err := c.push.PushDirectory(ctx, &assetpb.PushDirectoryRequest{})
			return err
		},
		"PushBlob": func() error {
			_, err := c.push.PushBlob(ctx, &assetpb.PushBlobRequest{})
			return err
		},
		"UpdateReference": func() error {
			_, err := c.refs.UpdateReference(ctx, &bspb.UpdateReferenceRequest{})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s on a read-only server: %v; want PERMISSION_DENIED", name, err)
		}
	}
	if st, err := c.refs.Status(ctx, &bspb.StatusRequest{}); err != nil || st.GetAllowUpdates() {
		t.Errorf("Status = %v, %v; want allow_updates false", st, err)
	}
}

// GetTree pages: page_size bounds each response, and a page token resumes
// the walk where it says.
func TestGetTreePaging(t *testing.T) {
	addr, _, _ := startServer(t, server.Options{AllowWrites: true})
	c := connect(t, addr)
	ctx := context.Background()
	// A chain root -> d1 -> d2 -> d3, each with a file of its own.
	var reqs []*repb.BatchUpdateBlobsRequest_Request
	var below *repb.DirectoryNode
	var want []*repb.Directory
	for i := 3; i >= 0; i-- {
		file := []byte(fmt.Sprintf("file %d", i))
		dir := &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: digest.NewFromBlob(file).ToProto()}}}
		if below != nil {
			dir.Directories = []*repb.DirectoryNode{below}
		}
		data, _ := proto.Marshal(dir)
		reqs = append(reqs,
			&repb.BatchUpdateBlobsRequest_Request{Digest: digest.NewFromBlob(file).ToProto(), Data: file},
			&repb.BatchUpdateBlobsRequest_Request{Digest: digest.NewFromBlob(data).ToProto(), Data: data})
		below = &repb.DirectoryNode{Name: fmt.Sprint("d", i), Digest: digest.NewFromBlob(data).ToProto()}
		want = append([]*repb.Directory{dir}, want...)
	}
	if _, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: reqs}); err != nil {
		t.Fatal(err)
	}
	pages := func(token string) (got []*repb.Directory, tokens []string) {
		s, err := c.cas.GetTree(ctx, &repb.GetTreeRequest{RootDigest: below.GetDigest(), PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for {
			resp, err := s.Recv()
			if err != nil {
				if status.Code(err) != codes.OK && err.Error() != "EOF" {
					t.Fatal(err)
				}
				return got, tokens
			}
			if len(resp.GetDirectories()) > 2 {
				t.Errorf("a page of %d directories; page_size is 2", len(resp.GetDirectories()))
			}
			got = append(got, resp.GetDirectories()...)
			tokens = append(tokens, resp.GetNextPageToken())
		}
	}
	got, tokens := pages("")
	if len(got) != 4 || len(tokens) != 2 || tokens[0] == "" || tokens[1] != "" {
		t.Fatalf("GetTree: %d directories in pages with tokens %q", len(got), tokens)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("directory %d differs", i)
		}
	}
	rest, _ := pages(tokens[0])
	if len(rest) != 2 || !proto.Equal(rest[0], want[2]) || !proto.Equal(rest[1], want[3]) {
		t.Errorf("resuming at %q gave %d directories", tokens[0], len(rest))
	}
}

// Answers that say what happened: a read of a hash the server has with
// another size is NOT_FOUND (not corruption); wrong data for a blob the
// server has is INVALID_ARGUMENT (not OK); an index entry whose Directory
// is corrupt on the server is NOT_FOUND (not INTERNAL).
func TestHonestCodes(t *testing.T) {
	addr, store, _ := startServer(t, server.Options{AllowWrites: true})
	c := connect(t, addr)
	ctx := context.Background()
	data := []byte("a blob the server has")
	d, err := store.Add(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := read(ctx, c, blobName(digest.Digest{Hash: d.Hash, Size: d.Size + 1}), 0, 0); status.Code(err) != codes.NotFound {
		t.Errorf("read with the wrong size: %v; want NOT_FOUND", err)
	}
	resp, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: d.ToProto(), Data: []byte("other data, same size!")[:len(data)]}}})
	if err != nil || codes.Code(resp.GetResponses()[0].GetStatus().GetCode()) != codes.InvalidArgument {
		t.Errorf("BatchUpdateBlobs with wrong data for a blob the server has: %v %v; want INVALID_ARGUMENT", resp, err)
	}

	dir, _ := proto.Marshal(&repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: d.ToProto()}}})
	root, err := store.Add(dir)
	if err != nil {
		t.Fatal(err)
	}
	const uri = buildstream.URNBst1Artifact + "demo/corrupt/key"
	if _, err := c.push.PushDirectory(ctx, &assetpb.PushDirectoryRequest{Uris: []string{uri}, RootDirectoryDigest: root.ToProto()}); err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), dir...)
	bad[len(bad)-1] ^= 0xff
	p := store.ObjectPath(root)
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = c.fetch.FetchDirectory(ctx, &assetpb.FetchDirectoryRequest{Uris: []string{uri}})
	if status.Code(err) != codes.NotFound {
		t.Errorf("FetchDirectory of an entry whose Directory is corrupt: %v; want NOT_FOUND", err)
	}
}
