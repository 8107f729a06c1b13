package server_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/klauspost/compress/zstd"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/server"
)

// readAll reads a whole blob by ByteStream and returns what came before
// the stream ended, and how it ended.
func readAll(t *testing.T, bs bsgrpc.ByteStreamClient, name string) ([]byte, error) {
	t.Helper()
	stream, err := bs.Read(context.Background(), &bsgrpc.ReadRequest{ResourceName: name})
	if err != nil {
		return nil, err
	}
	var got []byte
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got = append(got, resp.GetData()...)
	}
}

// An object that rots on the server's disk after it was read good is
// never served as good again: every whole read is hashed. A ByteStream
// read ends in DATA_LOSS before its last bytes (identity) or the end of
// its zstd frame, so even a client that ignored the status could not
// take the blob for whole; a batch read answers DATA_LOSS for it. Each
// read is made once while the object is good, so that a server that
// verified an object once and trusted it afterwards fails here.
func TestCorruptObjectNeverServedAsGood(t *testing.T) {
	addr, store, _ := startServer(t, server.Options{})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	bs := bsgrpc.NewByteStreamClient(conn)
	cas := repb.NewContentAddressableStorageClient(conn)

	for _, size := range []int{20 << 10, 3<<20 + 5} { // one message; several
		data := make([]byte, size)
		rand.Read(data)
		d, err := store.Add(data)
		if err != nil {
			t.Fatal(err)
		}
		identity := fmt.Sprintf("blobs/%s/%d", d.Hash, d.Size)
		compressed := fmt.Sprintf("compressed-blobs/zstd/%s/%d", d.Hash, d.Size)
		batch := func() *repb.BatchReadBlobsResponse_Response {
			resp, err := cas.BatchReadBlobs(context.Background(), &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{d.ToProto()}})
			if err != nil {
				t.Fatal(err)
			}
			return resp.GetResponses()[0]
		}

		// Good: every way of reading serves it whole.
		if got, err := readAll(t, bs, identity); err != nil || digest.NewFromBlob(got) != d {
			t.Fatalf("%d bytes: read while good: %d bytes, %v", size, len(got), err)
		}
		if got, err := readAll(t, bs, compressed); err != nil || digest.NewFromBlob(inflate(t, got)) != d {
			t.Fatalf("%d bytes: zstd read while good: %v", size, err)
		}
		if size <= 1<<20 {
			if r := batch(); r.GetStatus().GetCode() != 0 || digest.NewFromBlob(r.GetData()) != d {
				t.Fatalf("%d bytes: batch read while good: %v", size, r.GetStatus())
			}
		}

		// One bit flips in the middle; size and name stay.
		p := store.ObjectPath(d)
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		f.ReadAt(b, int64(size/2))
		b[0] ^= 0x10
		f.WriteAt(b, int64(size/2))
		f.Close()

		got, err := readAll(t, bs, identity)
		if status.Code(err) != codes.DataLoss {
			t.Errorf("%d bytes: read of the corrupt object ended in %v, want DATA_LOSS", size, err)
		}
		if len(got) >= size {
			t.Errorf("%d bytes: read of the corrupt object delivered all %d bytes before DATA_LOSS", size, len(got))
		}
		got, err = readAll(t, bs, compressed)
		if status.Code(err) != codes.DataLoss {
			t.Errorf("%d bytes: zstd read of the corrupt object ended in %v, want DATA_LOSS", size, err)
		}
		if out, err := zstdDecode(got); err == nil && len(out) == size {
			t.Errorf("%d bytes: zstd read of the corrupt object delivered a whole frame of all its bytes", size)
		}
		if size <= 1<<20 {
			if r := batch(); codes.Code(r.GetStatus().GetCode()) != codes.DataLoss || len(r.GetData()) > 0 {
				t.Errorf("%d bytes: batch read of the corrupt object: %v with %d bytes, want DATA_LOSS and none", size, r.GetStatus(), len(r.GetData()))
			}
		}
	}
}

// An empty file under a hash that is not the empty blob's is corrupt too,
// though no byte of it goes through the hash on the way out.
func TestEmptyFileUnderAnotherHash(t *testing.T) {
	addr, store, _ := startServer(t, server.Options{})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	d := digest.Digest{Hash: digest.NewFromBlob([]byte("not empty")).Hash, Size: 0}
	p := store.ObjectPath(d)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"blobs", "compressed-blobs/zstd"} {
		_, err := readAll(t, bsgrpc.NewByteStreamClient(conn), fmt.Sprintf("%s/%s/0", kind, d.Hash))
		if status.Code(err) != codes.DataLoss {
			t.Errorf("%s read of an empty file under another hash: %v, want DATA_LOSS", kind, err)
		}
	}
}

func zstdDecode(b []byte) ([]byte, error) {
	dec, err := zstd.NewReader(nil)
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	return dec.DecodeAll(b, nil)
}

func inflate(t *testing.T, b []byte) []byte {
	t.Helper()
	out, err := zstdDecode(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
