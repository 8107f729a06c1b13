package commands_test

import (
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// A server under a quota may evict blobs a push sent before the push
// names them in its ref: serve --quota did under load (many clients
// uploading blobs no ref names), and the push failed with "names 1 blobs
// this server does not hold". The push sends what the server lacks again
// and writes the ref again. Here serve loses the artifact's large blob
// just before the push's first index write, as eviction would.
func TestPushSendsLostBlobsAgain(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	served, err := cache.Open(srv.Dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	local := t.TempDir()
	refs := bst1Artifacts(t, local, "proj/lost-%d/key", 1, 4, 4<<10, 256<<10, 11)
	store, err := cache.Open(local, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	var large digest.Digest
	store.WalkObjects(func(o cache.ObjectInfo) error {
		if o.Digest.Size == 256<<10 {
			large = o.Digest
		}
		return nil
	})
	// The first index write once the server has the blob (the client's
	// probe at connection, with no URI, comes before) finds it gone.
	var lost atomic.Bool
	var indexWrites atomic.Int64
	proxy := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{OnCall: func(method string) {
		if !strings.HasSuffix(method, "/PushDirectory") {
			return
		}
		if !lost.Load() && os.Remove(served.ObjectPath(large)) == nil {
			lost.Store(true)
		}
		if lost.Load() {
			indexWrites.Add(1)
		}
	}})
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", "http://"+proxy, true))
	rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "push", refs[0])
	if code != 0 || statuses(rep) != "done@serve" {
		t.Fatalf("push after the server lost a blob: exit %d, %s\n%s", code, statuses(rep), stderr)
	}
	if !lost.Load() {
		t.Fatal("the server never had the blob to lose")
	}
	if n := indexWrites.Load(); n != 2 {
		t.Errorf("%d index writes, want 2 (the entry written again once the lost blob was sent again)", n)
	}
	if rep.Pushed.Bytes < 2*large.Size {
		t.Errorf("%d bytes pushed: want the large blob's %d twice", rep.Pushed.Bytes, large.Size)
	}
	// The server holds the artifact whole: a pull from it finds every blob.
	direct := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), false))
	if _, stderr, code := runJSON(t, "--config", direct, "--local", t.TempDir(), "pull", refs[0]); code != 0 {
		t.Fatalf("pull of the pushed ref: exit %d\n%s", code, stderr)
	}
}
