package server_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/internal/zstdwire"
	"github.com/bst-cache/bst-cache/server"
)

func zstdName(d digest.Digest) string {
	return fmt.Sprintf("compressed-blobs/zstd/%s/%d", d.Hash, d.Size)
}
func zstdUpload(d digest.Digest) string {
	return fmt.Sprintf("uploads/5d6e0c53-8f5b-4c0e-a0b2-6d1f0f1a2b3c/compressed-blobs/zstd/%s/%d", d.Hash, d.Size)
}

// chunked splits data into messages of n bytes.
func chunked(data []byte, n int) [][]byte {
	var out [][]byte
	for len(data) > n {
		out = append(out, data[:n])
		data = data[n:]
	}
	return append(out, data)
}

// serve speaks REAPI's zstd: it advertises it, takes compressed uploads
// and batches, and serves compressed reads (at offsets of the
// uncompressed blob) and batch answers, storing blobs uncompressed.
func TestZstd(t *testing.T) {
	addr, store, _ := startServer(t, server.Options{AllowWrites: true})
	c := connect(t, addr)
	ctx := context.Background()

	caps, err := c.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
	if err != nil || caps.GetCacheCapabilities().GetSupportedCompressors()[0] != repb.Compressor_ZSTD ||
		caps.GetCacheCapabilities().GetSupportedBatchUpdateCompressors()[0] != repb.Compressor_ZSTD {
		t.Fatalf("capabilities %v, %v: want ZSTD for streams and batches", caps, err)
	}

	data := []byte(strings.Repeat("zstd on the wire ", 200000)) // 3.4 MB
	d := digest.NewFromBlob(data)
	z := zstdwire.Compress(data)
	if err := write(ctx, c, zstdUpload(d), 0, chunked(z, 1000), true); err != nil {
		t.Fatalf("compressed upload: %v", err)
	}
	if got, err := store.ReadBlob(d); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the store holds %d bytes, %v; want the blob uncompressed", len(got), err)
	}
	// Again: the blob is there, which a compressed upload learns as -1.
	s, _ := c.bs.Write(ctx)
	s.Send(&bsgrpc.WriteRequest{ResourceName: zstdUpload(d), Data: z[:10]})
	if resp, err := s.CloseAndRecv(); err != nil || resp.GetCommittedSize() != -1 {
		t.Errorf("compressed upload of a stored blob: %v, %v; want committed_size -1", resp, err)
	}

	for _, off := range []int64{0, 1, 1 << 20, d.Size} {
		got, err := read(ctx, c, zstdName(d), off, 0)
		if err != nil {
			t.Fatalf("compressed read at %d: %v", off, err)
		}
		if len(got) >= len(data)/4 {
			t.Errorf("compressed read at %d: %d bytes on the wire for %d", off, len(got), len(data))
		}
		plain, err := zstdwire.Decompress(got, d.Size-off)
		if err != nil || !bytes.Equal(plain, data[off:]) {
			t.Errorf("compressed read at %d inflates to %d bytes, %v", off, len(plain), err)
		}
	}

	small := []byte(strings.Repeat("small blob ", 100))
	sd := digest.NewFromBlob(small)
	up, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: sd.ToProto(), Data: zstdwire.Compress(small), Compressor: repb.Compressor_ZSTD},
	}})
	if err != nil || up.GetResponses()[0].GetStatus().GetCode() != 0 {
		t.Fatalf("compressed batch update: %v, %v", up, err)
	}
	rd, err := c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{sd.ToProto()}, AcceptableCompressors: []repb.Compressor_Value{repb.Compressor_ZSTD}})
	if err != nil {
		t.Fatal(err)
	}
	r := rd.GetResponses()[0]
	if r.GetCompressor() != repb.Compressor_ZSTD {
		t.Fatalf("batch read answered with %s; want ZSTD", r.GetCompressor())
	}
	if plain, err := zstdwire.Decompress(r.GetData(), sd.Size); err != nil || !bytes.Equal(plain, small) {
		t.Errorf("batch read inflates to %q, %v", plain, err)
	}
	// A client that did not ask for zstd gets the blob as it is.
	rd, _ = c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{sd.ToProto()}})
	if r := rd.GetResponses()[0]; r.GetCompressor() != repb.Compressor_IDENTITY || !bytes.Equal(r.GetData(), small) {
		t.Errorf("plain batch read: %s, %d bytes", r.GetCompressor(), len(r.GetData()))
	}
}

// Compressed uploads that lie are refused and leave nothing: a bomb (a
// few KiB inflating far past the digest's size), data that inflates to
// other bytes, a frame cut short, and a batch entry claiming more than the
// batch limit once inflated.
func TestZstdHostileUploads(t *testing.T) {
	addr, store, _ := startServer(t, server.Options{AllowWrites: true})
	c := connect(t, addr)
	ctx := context.Background()

	var bomb bytes.Buffer
	w := zstdwire.NewWriter(&bomb)
	zeros := make([]byte, 1<<20)
	for range 2048 { // 2 GiB of zeros
		w.Write(zeros)
	}
	w.Close()
	small := make([]byte, 4096)
	sd := digest.NewFromBlob(small)
	other := []byte(strings.Repeat("other data ", 1000))
	od := digest.Digest{Hash: digest.NewFromBlob([]byte("x")).Hash, Size: int64(len(other))}
	full := zstdwire.Compress([]byte(strings.Repeat("cut short ", 100000)))
	fd := digest.NewFromBlob([]byte(strings.Repeat("cut short ", 100000)))

	for _, tc := range []struct {
		name   string
		d      digest.Digest
		chunks [][]byte
	}{
		{"bomb", sd, chunked(bomb.Bytes(), 64<<10)},
		{"other bytes", od, [][]byte{zstdwire.Compress(other)}},
		{"cut short", fd, [][]byte{full[:len(full)/2]}},
		{"not zstd", sd, [][]byte{[]byte("plain bytes, not a frame")}},
	} {
		err := write(ctx, c, zstdUpload(tc.d), 0, tc.chunks, true)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v; want INVALID_ARGUMENT", tc.name, err)
		}
		if ok, _ := store.Has(tc.d); ok {
			t.Errorf("%s: the blob was stored", tc.name)
		}
	}
	huge := digest.Digest{Hash: sd.Hash, Size: 1 << 40}
	_, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: huge.ToProto(), Data: bomb.Bytes()[:1000], Compressor: repb.Compressor_ZSTD},
	}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("a batch entry inflating to 1 TiB: %v; want INVALID_ARGUMENT before inflating", err)
	}
	up, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: sd.ToProto(), Data: bomb.Bytes(), Compressor: repb.Compressor_ZSTD},
	}})
	if err != nil || up.GetResponses()[0].GetStatus().GetCode() != int32(codes.InvalidArgument) {
		t.Errorf("a bomb in a batch: %v, %v; want the entry refused with INVALID_ARGUMENT", up, err)
	}
	if ok, _ := store.Has(sd); ok {
		t.Error("the bomb's digest was stored")
	}
}
