package remotes_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
	"github.com/bst-cache/bst-cache/remotes"
)

// tree is a two-level Directory tree with its blobs.
func tree() (root digest.Digest, rootDir, childDir *repb.Directory, blobs map[digest.Digest][]byte) {
	file := []byte("leaf")
	childDir = &repb.Directory{Files: []*repb.FileNode{{Name: "leaf.txt", Digest: digest.NewFromBlob(file).ToProto(), IsExecutable: true}}}
	childData, _ := proto.Marshal(childDir)
	rootDir = &repb.Directory{
		Directories: []*repb.DirectoryNode{{Name: "sub", Digest: digest.NewFromBlob(childData).ToProto()}},
		Symlinks:    []*repb.SymlinkNode{{Name: "link", Target: "sub/leaf.txt"}},
	}
	rootData, _ := proto.Marshal(rootDir)
	root = digest.NewFromBlob(rootData)
	blobs = map[digest.Digest][]byte{digest.NewFromBlob(file): file, digest.NewFromBlob(childData): childData, root: rootData}
	return root, rootDir, childDir, blobs
}

// The remotes layer against bst-cache serve: every call it has.
func TestCallsAgainstServe(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	r := dial(t, cacheConfig("serve", srv.URL(), config.TypeAll))
	res := probe(t, r, config.TypeAll)
	want := remotes.Capabilities{
		CAS: true, BatchRead: true, BatchUpdate: true, GetTree: true, RemoteAssetFetch: true, RemoteAssetPush: true,
		ReferenceStorage: true, AllowUpdates: true, PushAllowed: remotes.PushYes, MaxBatchBytes: res.Caps.MaxBatchBytes, Compressors: []string{},
	}
	if res.Status != remotes.StatusOK || res.Warning != "" || res.Caps.MaxBatchBytes <= 0 || !capsEqual(res.Caps, want) {
		t.Fatalf("probe: %s %v %q %+v; want everything supported", res.Status, res.Err, res.Warning, res.Caps)
	}
	checkCAS(t, r)

	ctx := context.Background()
	root, rootDir, childDir, blobs := tree()
	upload(t, r, blobs)
	dirs, err := r.GetTree(ctx, root)
	if err != nil || len(dirs) != 2 || !proto.Equal(dirs[0], rootDir) || !proto.Equal(dirs[1], childDir) {
		t.Errorf("GetTree = %v, %v", dirs, err)
	}

	// A BuildStream 1 ref written through one API is read through the other.
	if err := r.UpdateReference(ctx, []string{"demo/hello/strong"}, root); err != nil {
		t.Fatal(err)
	}
	if got, err := r.FetchDirectory(ctx, "urn:fdc:buildstream.build:2020:v1:demo/hello/strong"); err != nil || got != root {
		t.Errorf("FetchDirectory after UpdateReference = %v, %v", got, err)
	}
	if err := r.PushDirectory(ctx, []string{"urn:fdc:buildstream.build:2020:v1:demo/hello/weak"}, root); err != nil {
		t.Fatal(err)
	}
	if got, err := r.GetReference(ctx, "demo/hello/weak"); err != nil || got != root {
		t.Errorf("GetReference after PushDirectory = %v, %v", got, err)
	}
	if ok, err := r.ReferenceStatus(ctx); !ok || err != nil {
		t.Errorf("ReferenceStatus = %v, %v", ok, err)
	}
	for _, miss := range []func() error{
		func() error { _, err := r.GetReference(ctx, "demo/none/x"); return err },
		func() error {
			_, err := r.FetchDirectory(ctx, "urn:fdc:buildstream.build:2020:v1:demo/none/x")
			return err
		},
		func() error {
			_, err := r.FetchBlob(ctx, "urn:fdc:buildstream.build:2020:artifact:demo/none/x")
			return err
		},
	} {
		if err := miss(); !errors.Is(err, remotes.ErrNotFound) {
			t.Errorf("lookup of an absent ref = %v; want ErrNotFound", err)
		}
	}

	// A BuildStream 2 artifact: the proto, with what it names.
	meta := []byte("meta: yes\n")
	art := &bspb.Artifact{Version: 1, BuildSuccess: true, StrongKey: "k", Files: root.ToProto(),
		LowDiversityMeta: digest.NewFromBlob(meta).ToProto(), HighDiversityMeta: digest.NewFromBlob(meta).ToProto()}
	artData, _ := proto.Marshal(art)
	artDigest := digest.NewFromBlob(artData)
	const urn = "urn:fdc:buildstream.build:2020:artifact:demo/hello/k"
	var re *remotes.Error
	upload(t, r, map[digest.Digest][]byte{artDigest: artData})
	if err := r.PushBlob(ctx, []string{urn}, artDigest, []digest.Digest{digest.NewFromBlob(meta)}, []digest.Digest{root}); !errors.As(err, &re) || re.Code != codes.FailedPrecondition {
		t.Errorf("PushBlob naming a blob the server lacks = %v; want FAILED_PRECONDITION", err)
	}
	upload(t, r, map[digest.Digest][]byte{digest.NewFromBlob(meta): meta})
	if err := r.PushBlob(ctx, []string{urn}, artDigest, []digest.Digest{digest.NewFromBlob(meta)}, []digest.Digest{root}); err != nil {
		t.Fatal(err)
	}
	if got, err := r.FetchBlob(ctx, urn); err != nil || got != artDigest {
		t.Errorf("FetchBlob = %v, %v; want %v", got, err, artDigest)
	}

	// Any other URI gets an index of its own.
	const other = "https://example.com/source.tar.gz"
	if err := r.PushDirectory(ctx, []string{other}, root); err != nil {
		t.Fatal(err)
	}
	if got, err := r.FetchDirectory(ctx, other); err != nil || got != root {
		t.Errorf("FetchDirectory(%s) = %v, %v", other, got, err)
	}
	if _, err := r.FetchBlob(ctx, other); !errors.Is(err, remotes.ErrNotFound) {
		t.Errorf("FetchBlob of a URI pushed as a directory = %v; want ErrNotFound", err)
	}
}

func capsEqual(a, b remotes.Capabilities) bool {
	return a.CAS == b.CAS && a.BatchRead == b.BatchRead && a.BatchUpdate == b.BatchUpdate && a.GetTree == b.GetTree &&
		a.RemoteAssetFetch == b.RemoteAssetFetch && a.RemoteAssetPush == b.RemoteAssetPush &&
		a.ReferenceStorage == b.ReferenceStorage && a.AllowUpdates == b.AllowUpdates && a.PushAllowed == b.PushAllowed
}

// Bearer tokens, checked by serve --access-token.
func TestBearerToken(t *testing.T) {
	const secret = "s3cr3t-token-value"
	srv := testenv.StartServe(t, testenv.ServeOptions{Args: []string{"--access-token", writeToken(t, secret)}})
	url := srv.URL()
	good := cacheConfig("tok", url, config.TypeIndex)
	good.Auth.AccessTokenFile = writeToken(t, secret)
	if res := probe(t, dial(t, good), config.TypeIndex); res.Status != remotes.StatusOK {
		t.Fatalf("with the token: %s %v", res.Status, res.Err)
	}
	for name, auth := range map[string]string{"wrong token": writeToken(t, "wrong-"+secret), "no token": ""} {
		c := cacheConfig("tok", url, config.TypeIndex)
		c.Auth.AccessTokenFile = auth
		res := probe(t, dial(t, c), config.TypeIndex)
		if res.Status != remotes.StatusError || !strings.Contains(res.Err.Error(), "not authenticated") {
			t.Errorf("%s: %s %v; want a refusal", name, res.Status, res.Err)
		}
		if strings.Contains(res.Err.Error(), secret) {
			t.Errorf("%s: the error shows the token: %v", name, res.Err)
		}
	}
	if strings.Contains(srv.Log(), secret) {
		t.Errorf("serve's log shows the token:\n%s", srv.Log())
	}
}
