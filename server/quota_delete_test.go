package server_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
	lspb "github.com/bst-cache/bst-cache/protos/bstcache/v1"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
	"github.com/bst-cache/bst-cache/server"
)

// An eviction pass deletes its refs' files while lookups, listings and
// index writes go on: serve held the locks they wait on through every
// deletion (0.2 s at 200,000 refs, ten times that at ten times the size).
// The pass here evicts dozens of refs of a real server, the oldest first;
// the first one's file cannot be removed (it is a directory now), and
// while the pass goes on past it (the server logs the failure), a client
// looks up a ref that stays, asks FindMissingBlobs, lists the refs, looks
// up a ref the pass is to delete, and writes another such ref again. The
// lookups and the write answer at once; the ref being deleted is absent;
// the ref written again stays whole, as does the one whose deletion
// failed; every ref on disk, during the pass and after, names only blobs
// present. (On main the client's
// calls waited for the whole pass, here for ever: the log is written
// while the pass holds the locks.)
func TestQuotaLookupsGoOnWhileAPassDeletesRefs(t *testing.T) {
	const artifacts = 300
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	// Each artifact a Directory over a 1 KiB file of its own, its ref used
	// a second after the one before.
	name := func(i int) string { return fmt.Sprintf("demo/a%03d/1", i) }
	roots := make([]digest.Digest, artifacts)
	own := make([]digest.Digest, artifacts)
	var used int64
	start := time.Now().Add(-time.Hour)
	for i := range artifacts {
		file := bytes.Repeat([]byte{byte(i)}, 1<<10)
		copy(file, name(i))
		root, blobs := artifactTree(map[string][]byte{"f": file})
		for d, b := range blobs {
			if err := store.PutBytes(d, b); err != nil {
				t.Fatal(err)
			}
			used += d.Size
		}
		if err := store.SetRef(cache.KindBst1Artifact, name(i), buildstream.V1RefContent(root)); err != nil {
			t.Fatal(err)
		}
		p, _ := store.RefPath(cache.KindBst1Artifact, name(i))
		at := start.Add(time.Duration(i) * time.Second)
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
		roots[i], own[i] = root, digest.NewFromBlob(file)
	}

	// The hook: when the pass logs that it could not remove the first
	// ref, the client's calls, each waited for 10 s at most.
	var once sync.Once
	hooked := make(chan struct{})
	var calls []string // what went wrong
	var addr string
	logf := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		if !strings.Contains(line, "removing bst1-artifact ref "+name(0)) {
			return
		}
		once.Do(func() {
			defer close(hooked)
			calls = append(refsWhole(store, "during the pass"), duringPass(addr, name, roots, own, artifacts)...)
		})
	}
	const lease = 200 * time.Millisecond
	quota := used * 100 / 99 // the store at 99% of it
	addr, _, srv := startServer(t, server.Options{Store: store, AllowWrites: true, Quota: quota, Lease: lease, ReadLease: lease, Logf: logf})
	waitKnown(t, srv)
	time.Sleep(3 * lease) // the start-up walk's leases run out

	// The first ref's file cannot be removed now.
	p, _ := store.RefPath(cache.KindBst1Artifact, name(0))
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(p, "x"), 0o755); err != nil {
		t.Fatal(err)
	}

	// A push of a tenth of the quota: room for it is made by evicting
	// about a fifth of the refs.
	r := dialRemote(t, addr)
	ctx := context.Background()
	big := bytes.Repeat([]byte("b"), int(quota/10)-200)
	root, blobs := artifactTree(map[string][]byte{"big": big})
	if _, _, err := r.Upload(ctx, slices.Collect(maps.Keys(blobs)), testenv.MemoryOpener(blobs), 4); err != nil {
		t.Fatal(err)
	}
	if err := r.PushDirectory(ctx, []string{buildstream.URNBst1Artifact + "demo/big/1"}, root); err != nil {
		t.Fatal(err)
	}
	select {
	case <-hooked:
	case <-time.After(30 * time.Second):
		t.Fatal("no pass failed to remove the first ref's file")
	}
	for _, c := range calls {
		t.Error(c)
	}
	// The pass is over once the objects of the refs it deleted are gone.
	deadline := time.Now().Add(30 * time.Second)
	for st := srv.Stats().Quota; st.EvictedObjects < st.EvictedRefs || st.Removing > 0; st = srv.Stats().Quota {
		if time.Now().After(deadline) {
			t.Fatalf("the pass did not end: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := srv.Stats().Quota
	t.Logf("the pass evicted %d refs, %d objects", st.EvictedRefs, st.EvictedObjects)
	if st.EvictedRefs < 20 {
		t.Errorf("the pass evicted %d refs, want dozens", st.EvictedRefs)
	}

	// The ref whose deletion failed stays, with its blobs.
	if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
		t.Errorf("the ref whose file could not be removed: %v", err)
	}
	if ok, _ := store.Has(own[0]); !ok {
		t.Error("the blob of the ref whose file could not be removed went")
	}
	// The ref being deleted went, with its blob; the one written again
	// during the pass stays.
	if _, err := store.GetRef(cache.KindBst1Artifact, name(1)); err == nil {
		t.Errorf("%s was not evicted", name(1))
	}
	if ok, _ := store.Has(own[1]); ok {
		t.Errorf("the blob of %s, evicted, is still stored", name(1))
	}
	if _, err := store.GetRef(cache.KindBst1Artifact, name(2)); err != nil {
		t.Errorf("%s, written again during the pass, went: %v", name(2), err)
	}
	for _, w := range refsWhole(store, "after the pass") {
		t.Error(w)
	}
}

// refsWhole checks that every ref in store names only blobs present (a
// pass deletes a ref before any blob it names), and says what is wrong.
func refsWhole(store *cache.Store, when string) (wrong []string) {
	infos, err := store.ListRefs(cache.KindBst1Artifact, "")
	if err != nil {
		return []string{err.Error()}
	}
	for _, info := range infos {
		data, err := store.GetRef(cache.KindBst1Artifact, info.Name)
		if err != nil {
			continue // gone since, or the directory's file
		}
		n, err := buildstream.ReadRef(cache.KindBst1Artifact, data)
		if err != nil {
			continue // the directory's file
		}
		if _, missing, err := store.Closure(n.Digest); err != nil || len(missing) > 0 {
			wrong = append(wrong, fmt.Sprintf("%s: %s names blobs the store lacks: %v %v", when, info.Name, missing, err))
		}
	}
	return wrong
}

// duringPass is what a client does while a pass deletes the refs of
// TestQuotaLookupsGoOnWhileAPassDeletesRefs, the first one's deletion just
// failed: what went wrong.
func duringPass(addr string, name func(int) string, roots, own []digest.Digest, artifacts int) (wrong []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := connectRaw(addr)
	if err != nil {
		return []string{err.Error()}
	}
	defer c.conn.Close()
	newest := name(artifacts - 1)
	if got, err := c.refs.GetReference(ctx, &bspb.GetReferenceRequest{Key: newest}); err != nil || digest.NewFromProtoUnvalidated(got.GetDigest()) != roots[artifacts-1] {
		wrong = append(wrong, fmt.Sprintf("GetReference of %s, which stays, during the pass: %v", newest, err))
	}
	fmb, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{own[artifacts-1].ToProto()}})
	if err != nil || len(fmb.GetMissingBlobDigests()) != 0 {
		wrong = append(wrong, fmt.Sprintf("FindMissingBlobs during the pass: %v, missing %v", err, fmb.GetMissingBlobDigests()))
	}
	list, err := lspb.NewRefListingClient(c.conn).ListRefs(ctx, &lspb.ListRefsRequest{Kind: string(cache.KindBst1Artifact)})
	var listed []string
	for _, r := range list.GetRefs() {
		listed = append(listed, r.GetName())
	}
	if err != nil || slices.Contains(listed, name(1)) || !slices.Contains(listed, newest) {
		wrong = append(wrong, fmt.Sprintf("ListRefs during the pass: %v; want %s, the pass deleting, left out and %s listed", err, name(1), newest))
	}
	if _, err := c.refs.GetReference(ctx, &bspb.GetReferenceRequest{Key: name(1)}); status.Code(err) != codes.NotFound {
		wrong = append(wrong, fmt.Sprintf("GetReference of %s, which the pass is deleting: %v, want NOT_FOUND", name(1), err))
	}
	if _, err := c.refs.UpdateReference(ctx, &bspb.UpdateReferenceRequest{Keys: []string{name(2)}, Digest: roots[2].ToProto()}); err != nil {
		wrong = append(wrong, fmt.Sprintf("UpdateReference of %s, which the pass is to delete: %v", name(2), err))
	}
	return wrong
}
