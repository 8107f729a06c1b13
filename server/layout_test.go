package server_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
	"github.com/bst-cache/bst-cache/server"
)

// A new serve directory asked for a ref as both formats at once (bst-cache
// with no format set, before a copy into it) and then sent a BuildStream 1
// artifact takes BuildStream 1's layout, whichever lookup arrived first: a
// lookup of a BuildStream 2 ref that is not there decides nothing, so
// bst-artifact-server can take the directory back.
func TestNewServeDirBst2AskDecidesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "serve")
	store, err := cache.Open(dir, cache.KindArtifact)
	if err != nil {
		t.Fatal(err)
	}
	addr, _, _ := startServer(t, server.Options{Store: store, AllowWrites: true})
	r := dialRemote(t, addr)
	ctx := context.Background()
	const ref = "demo/hello/key"
	if _, err := r.FetchBlob(ctx, buildstream.URNBst2Artifact+ref); !errors.Is(err, remotes.ErrNotFound) {
		t.Fatalf("FetchBlob of a new directory: %v; want a miss", err)
	}
	if _, err := r.FetchDirectory(ctx, buildstream.URNBst1Artifact+ref); !errors.Is(err, remotes.ErrNotFound) {
		t.Fatalf("FetchDirectory of a new directory: %v; want a miss", err)
	}
	file := []byte("hello\n")
	root := &repb.Directory{Files: []*repb.FileNode{{Name: "hello", Digest: digest.NewFromBlob(file).ToProto()}}}
	rootData, err := proto.Marshal(root)
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[digest.Digest][]byte{digest.NewFromBlob(file): file, digest.NewFromBlob(rootData): rootData}
	var ds []digest.Digest
	for d := range blobs {
		ds = append(ds, d)
	}
	if _, _, err := r.Upload(ctx, ds, testenv.MemoryOpener(blobs), 2); err != nil {
		t.Fatal(err)
	}
	if err := r.PushDirectory(ctx, []string{buildstream.URNBst1Artifact + ref}, digest.NewFromBlob(rootData)); err != nil {
		t.Fatal(err)
	}
	if got := store.Layout(); got != cache.KindBst1Artifact {
		t.Errorf("the directory took the %q layout for a BuildStream 1 artifact", got)
	}
	for d := range blobs {
		if _, err := os.Stat(filepath.Join(dir, "cas", "objects", d.Hash[:2], d.Hash[2:])); err != nil {
			t.Errorf("blob %s is not where bst-artifact-server reads it: %v", d, err)
		}
	}
}
