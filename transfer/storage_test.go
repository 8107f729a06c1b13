package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
)

// storageImpl is one implementation of storage for the conformance suite.
type storageImpl struct {
	name string
	open func(t *testing.T) storage
	// noGetTree says why the implementation has no GetTree, when it has
	// none: it must then answer UNIMPLEMENTED.
	noGetTree string
}

// dialStorage connects to a real server with transfer's own dialer (gRPC,
// then the probe that learns its limits), as a run does.
func dialStorage(t *testing.T, name string, srv *testenv.Server, typ config.Type) storage {
	t.Helper()
	cfg := config.Cache{
		Name: name, URL: srv.URL(), Type: typ, MaxConcurrency: 4,
		Endpoint:   config.Endpoint{Target: srv.Addr},
		Connection: config.Connection{ConnectTimeout: 5 * time.Second, RequestTimeout: 30 * time.Second, RetryLimit: 1, RetryDelay: 50 * time.Millisecond},
	}
	r, _, err := dialRemote(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// Every implementation of storage keeps the same contract: the cases of
// testStorage, against each real server bst-cache speaks to and the
// in-memory cache the engine's table tests run on.
func TestStorageConformance(t *testing.T) {
	for _, impl := range []storageImpl{
		{name: "in-memory fake", open: func(*testing.T) storage { return newFake("fake") },
			noGetTree: "the in-memory cache has no GetTree"},
		{name: "serve", open: func(t *testing.T) storage {
			return dialStorage(t, "serve", testenv.StartServe(t, testenv.ServeOptions{Push: true}), config.TypeAll)
		}},
		{name: "bazel-remote", open: func(t *testing.T) storage {
			return dialStorage(t, "bazel-remote", testenv.StartBazelRemote(t), config.TypeStorage)
		}},
		{name: "bst-artifact-server", open: func(t *testing.T) storage {
			return dialStorage(t, "bst-artifact-server", testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true}), config.TypeAll)
		}, noGetTree: "bst-artifact-server (BuildStream 1.6) has no GetTree"},
	} {
		t.Run(impl.name, func(t *testing.T) { testStorage(t, impl) })
	}
}

// blobSet is test content: each case writes blobs of its own, named after
// it, so the cases share one server and do not depend on each other.
type blobSet map[digest.Digest][]byte

func newBlobs(contents ...[]byte) blobSet {
	s := blobSet{}
	for _, b := range contents {
		s[digest.NewFromBlob(b)] = b
	}
	return s
}

func (s blobSet) digests() []digest.Digest {
	ds := make([]digest.Digest, 0, len(s))
	for d := range s {
		ds = append(ds, d)
	}
	slices.SortFunc(ds, func(a, b digest.Digest) int { return strings.Compare(a.Hash, b.Hash) })
	return ds
}

func (s blobSet) open(d digest.Digest) (io.ReadCloser, error) {
	b, ok := s[d]
	if !ok {
		return nil, fmt.Errorf("no test blob %s", d)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// send writes blobs with Send, as a push does: what FindMissing says is
// missing; a fresh server lacks them all.
func send(t *testing.T, s storage, blobs blobSet) {
	t.Helper()
	ctx := context.Background()
	missing, err := s.FindMissing(ctx, blobs.digests())
	if err != nil {
		t.Fatalf("FindMissing: %v", err)
	}
	var want int64
	for _, d := range missing {
		want += d.Size
	}
	sent, err := s.Send(ctx, missing, blobs.open, 4)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if sent != want {
		t.Errorf("Send said %d bytes sent, want %d", sent, want)
	}
}

// absent is a blob no test writes.
var absent = digest.NewFromBlob([]byte("no test writes this blob"))

func testStorage(t *testing.T, impl storageImpl) {
	s := impl.open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("Send, then FindMissing", func(t *testing.T) {
		blobs := newBlobs([]byte("find one"), []byte("find two"), bytes.Repeat([]byte("find large "), 200<<10))
		missing, err := s.FindMissing(ctx, blobs.digests())
		if err != nil {
			t.Fatal(err)
		}
		if !sameDigests(missing, blobs.digests()) {
			t.Fatalf("before Send, FindMissing said %v missing, want all of %v", missing, blobs.digests())
		}
		send(t, s, blobs)
		missing, err = s.FindMissing(ctx, append(blobs.digests(), absent))
		if err != nil {
			t.Fatal(err)
		}
		if !sameDigests(missing, []digest.Digest{absent}) {
			t.Fatalf("after Send, FindMissing said %v missing, want only %v", missing, absent)
		}
	})

	t.Run("Plan fits MaxBatchBytes", func(t *testing.T) {
		limit := s.MaxBatchBytes()
		if limit <= 0 {
			t.Fatalf("MaxBatchBytes %d", limit)
		}
		var ds []digest.Digest
		for i := range 8 {
			ds = append(ds, digest.Digest{Hash: fmt.Sprintf("%064x", i), Size: limit / 3})
		}
		large := digest.Digest{Hash: fmt.Sprintf("%064x", 100), Size: limit + 1}
		ds = append(ds, large, digest.Digest{Hash: fmt.Sprintf("%064x", 101), Size: 1})
		batches, streamed := s.Plan(ds)
		var planned []digest.Digest
		for _, b := range batches {
			var size int64
			for _, d := range b {
				size += d.Size
			}
			if len(b) == 0 || size > limit {
				t.Errorf("a batch of %d blobs, %d bytes: want 1 or more, at most %d bytes", len(b), size, limit)
			}
			planned = append(planned, b...)
		}
		if !slices.Contains(streamed, large) {
			t.Errorf("a blob larger than MaxBatchBytes is not streamed: %v", streamed)
		}
		if !sameDigests(append(planned, streamed...), ds) {
			t.Errorf("Plan lost or repeated blobs: %d batched, %d streamed, of %d", len(planned), len(streamed), len(ds))
		}
	})

	t.Run("BatchRead, found and missing", func(t *testing.T) {
		blobs := newBlobs([]byte("batch one"), []byte("batch two"), bytes.Repeat([]byte("batch medium "), 5000))
		send(t, s, blobs)
		found, missing, err := s.BatchRead(ctx, append(blobs.digests(), absent))
		if err != nil {
			t.Fatal(err)
		}
		if len(found) != len(blobs) {
			t.Errorf("BatchRead found %d blobs, want %d", len(found), len(blobs))
		}
		for d, b := range blobs {
			if !bytes.Equal(found[d], b) {
				t.Errorf("BatchRead %s: %d bytes, want the %d written", d, len(found[d]), len(b))
			}
		}
		if !sameDigests(missing, []digest.Digest{absent}) {
			t.Errorf("BatchRead missing %v, want only %v", missing, absent)
		}
	})

	t.Run("ReadBlobFrom, whole and from an offset", func(t *testing.T) {
		small, large := []byte("read small blob"), bytes.Repeat([]byte("read large blob "), 300<<10)
		blobs := newBlobs(small, large)
		send(t, s, blobs)
		for _, b := range [][]byte{small, large} {
			d := digest.NewFromBlob(b)
			for _, off := range []int64{0, 1, d.Size / 3, d.Size - 1} {
				var buf bytes.Buffer
				if err := s.ReadBlobFrom(ctx, d, off, &buf); err != nil {
					t.Fatalf("ReadBlobFrom %s at %d: %v", d, off, err)
				}
				if !bytes.Equal(buf.Bytes(), b[off:]) {
					t.Errorf("ReadBlobFrom %s at %d: %d bytes, want the %d from there on", d, off, buf.Len(), d.Size-off)
				}
			}
		}
	})

	t.Run("NotFound for an absent blob", func(t *testing.T) {
		var buf bytes.Buffer
		err := s.ReadBlobFrom(ctx, absent, 0, &buf)
		if !errors.Is(err, remotes.ErrNotFound) {
			t.Errorf("ReadBlobFrom of an absent blob: %v, want remotes.ErrNotFound", err)
		}
		if buf.Len() > 0 {
			t.Errorf("ReadBlobFrom of an absent blob wrote %d bytes", buf.Len())
		}
		found, missing, err := s.BatchRead(ctx, []digest.Digest{absent})
		if err != nil || len(found) > 0 || !sameDigests(missing, []digest.Digest{absent}) {
			t.Errorf("BatchRead of an absent blob: found %d, missing %v, %v", len(found), missing, err)
		}
	})

	t.Run("GetTree", func(t *testing.T) {
		tree, want := testTree("get tree")
		root := want[0]
		send(t, s, tree)
		dirs, err := s.GetTree(ctx, root)
		if impl.noGetTree != "" {
			var re *remotes.Error
			if !errors.As(err, &re) || re.Code != codes.Unimplemented {
				t.Fatalf("GetTree where there is none: %v, want UNIMPLEMENTED", err)
			}
			t.Skip(impl.noGetTree)
		}
		if err != nil {
			t.Fatal(err)
		}
		var got []digest.Digest
		for _, dir := range dirs {
			data, err := proto.MarshalOptions{Deterministic: true}.Marshal(dir)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, digest.NewFromBlob(data))
		}
		if !sameDigests(got, want) {
			t.Errorf("GetTree gave Directories %v, want %v", got, want)
		}
		if len(got) > 0 && got[0] != root {
			t.Errorf("GetTree gave %v first, want the root %v", got[0], root)
		}
		if _, err := s.GetTree(ctx, absent); !errors.Is(err, remotes.ErrNotFound) {
			t.Errorf("GetTree of an absent root: %v, want remotes.ErrNotFound", err)
		}
	})

	t.Run("a cancelled context", func(t *testing.T) {
		blobs := newBlobs([]byte("never sent"), bytes.Repeat([]byte("never sent, large "), 300<<10))
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		ds := blobs.digests()
		if _, err := s.FindMissing(cctx, ds); err == nil {
			t.Error("FindMissing: no error")
		}
		if _, _, err := s.BatchRead(cctx, ds[:1]); err == nil {
			t.Error("BatchRead: no error")
		}
		var buf bytes.Buffer
		if err := s.ReadBlobFrom(cctx, ds[0], 0, &buf); err == nil {
			t.Error("ReadBlobFrom: no error")
		}
		if _, err := s.GetTree(cctx, ds[0]); err == nil {
			t.Error("GetTree: no error")
		}
		if _, err := s.Send(cctx, ds, blobs.open, 4); err == nil {
			t.Error("Send: no error")
		}
		if missing, err := s.FindMissing(ctx, ds); err != nil || !sameDigests(missing, ds) {
			t.Errorf("after a cancelled Send, FindMissing said %v missing, %v; want all of %v", missing, err, ds)
		}
	})

	t.Run("the empty blob", func(t *testing.T) {
		empty := newBlobs([]byte{})
		d := empty.digests()[0]
		send(t, s, empty)
		if missing, err := s.FindMissing(ctx, []digest.Digest{d}); err != nil || len(missing) > 0 {
			t.Errorf("FindMissing of the empty blob after Send: %v, %v", missing, err)
		}
		found, missing, err := s.BatchRead(ctx, []digest.Digest{d})
		if b, ok := found[d]; err != nil || !ok || len(b) > 0 || len(missing) > 0 {
			t.Errorf("BatchRead of the empty blob: found %q (%v), missing %v, %v", b, ok, missing, err)
		}
		var buf bytes.Buffer
		if err := s.ReadBlobFrom(ctx, d, 0, &buf); err != nil || buf.Len() > 0 {
			t.Errorf("ReadBlobFrom of the empty blob: %d bytes, %v", buf.Len(), err)
		}
	})
}

// testTree is a Directory tree (a file and a subdirectory with a file):
// every blob, and the Directories, root first.
func testTree(name string) (blobSet, []digest.Digest) {
	blobs := blobSet{}
	add := func(b []byte) digest.Digest {
		d := digest.NewFromBlob(b)
		blobs[d] = b
		return d
	}
	dir := func(m *repb.Directory) digest.Digest {
		data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			panic(err)
		}
		return add(data)
	}
	f1, f2 := add([]byte(name+" file one")), add([]byte(name+" file two"))
	sub := dir(&repb.Directory{Files: []*repb.FileNode{{Name: "two", Digest: f2.ToProto()}}})
	root := dir(&repb.Directory{
		Files:       []*repb.FileNode{{Name: "one", Digest: f1.ToProto()}},
		Directories: []*repb.DirectoryNode{{Name: "sub", Digest: sub.ToProto()}},
	})
	return blobs, []digest.Digest{root, sub}
}

func sameDigests(a, b []digest.Digest) bool {
	key := func(d digest.Digest) string { return d.String() }
	as, bs := make([]string, len(a)), make([]string, len(b))
	for i, d := range a {
		as[i] = key(d)
	}
	for i, d := range b {
		bs[i] = key(d)
	}
	slices.Sort(as)
	slices.Sort(bs)
	return slices.Equal(as, bs)
}
