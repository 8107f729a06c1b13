package server

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// Eviction removes files after releasing the locks lookups and index
// writes wait on; meanwhile an index write naming an object it is
// removing finds it missing (the client sends it again), though its file
// is still there: never a ref whose blobs are gone. The pass is run here
// in its two steps, plan then removal, to stand between them. Meanwhile
// the stats count the files' bytes as being removed.
func TestQuotaIndexWriteDuringRemovalFindsBlobsMissing(t *testing.T) {
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	file := bytes.Repeat([]byte("f"), 10<<10)
	fd := digest.NewFromBlob(file)
	dir, _ := proto.Marshal(&repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: fd.ToProto()}}})
	root := digest.NewFromBlob(dir)
	for d, b := range map[digest.Digest][]byte{fd: file, root: dir} {
		if err := store.PutBytes(d, b); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := New(Options{Store: store, AllowWrites: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	<-srv.indexed // the server's own walk is over: it reads srv.quota
	// An account of its own, without the loop that evicts on its own: a
	// 4 KiB quota, and leases that ran out.
	q := newAccount()
	q.s, q.limit, q.lease, q.readLease = srv, 4<<10, time.Millisecond, time.Millisecond
	err = store.WalkObjects(func(o cache.ObjectInfo) error {
		q.object(o)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	q.walked <- nil
	if err := q.measure(measureReaders); err != nil {
		t.Fatal(err)
	}
	q.know(time.Now(), q.useOrder())
	srv.quota = q
	time.Sleep(500 * time.Millisecond) // a lease lasts at least two eighths of a second

	_, gone := q.evictPass(time.Now(), 0)
	if len(gone) != 2 {
		t.Fatalf("eviction planned to remove %v, want the file and its Directory", gone)
	}
	if ok, _ := store.Has(fd); !ok {
		t.Fatal("the file went before the pass removed it")
	}
	if st := srv.Stats().Quota; st.Removing != fd.Size+root.Size || st.Bytes != 0 {
		t.Errorf("while the files are removed the stats say %d bytes removing, %d stored; want %d, 0", st.Removing, st.Bytes, fd.Size+root.Size)
	}
	_, err = srv.UpdateReference(context.Background(), &bspb.UpdateReferenceRequest{Keys: []string{"demo/a/1"}, Digest: root.ToProto()})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a ref naming blobs being removed: %v, want FAILED_PRECONDITION", err)
	}
	if freed := q.removeFiles(gone); freed != fd.Size+root.Size {
		t.Errorf("freed %d bytes, want %d", freed, fd.Size+root.Size)
	}
	if ok, _ := store.Has(fd); ok {
		t.Error("the file is still stored")
	}
	if st := srv.Stats().Quota; st.Removing != 0 {
		t.Errorf("once the files are removed the stats say %d bytes removing", st.Removing)
	}
	if _, err := store.GetRef(cache.KindBst1Artifact, "demo/a/1"); err == nil {
		t.Error("a ref was written over blobs since removed")
	}
}
