package remotes_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
)

// cacheConfig is a cache entry with the default connection settings.
func cacheConfig(name, url string, typ config.Type) config.Cache {
	target := strings.TrimPrefix(strings.TrimPrefix(url, "http://"), "https://")
	return config.Cache{
		Name: name, URL: url, Type: typ, MaxConcurrency: 8,
		Endpoint: config.Endpoint{Target: target, TLS: strings.HasPrefix(url, "https://"), ServerName: "127.0.0.1"},
		Connection: config.Connection{
			ConnectTimeout: 5 * time.Second, RequestTimeout: 30 * time.Second,
			RetryLimit: 1, RetryDelay: 50 * time.Millisecond,
		},
	}
}

func dial(t *testing.T, c config.Cache) *remotes.Remote {
	t.Helper()
	r, err := remotes.Dial(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func probe(t *testing.T, r *remotes.Remote, typ config.Type) remotes.ProbeResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return remotes.Probe(ctx, r, typ)
}

func TestProbeBstArtifactServer(t *testing.T) {
	for _, push := range []bool{true, false} {
		srv := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: push})
		res := probe(t, dial(t, cacheConfig("bst1", srv.URL(), config.TypeAll)), config.TypeAll)
		want := remotes.Capabilities{
			CAS: true, BatchRead: true, BatchUpdate: push, GetTree: false,
			RemoteAssetFetch: false, RemoteAssetPush: false,
			ReferenceStorage: true, AllowUpdates: push, PushAllowed: map[bool]remotes.Push{true: remotes.PushYes, false: remotes.PushNo}[push],
			MaxBatchBytes: 1 << 20, Compressors: []string{},
		}
		if res.Status != remotes.StatusOK || res.Err != nil {
			t.Errorf("push=%t: status %s, %v", push, res.Status, res.Err)
		}
		if diff := cmp.Diff(want, res.Caps); diff != "" {
			t.Errorf("push=%t: capabilities (-want +got):\n%s", push, diff)
		}
	}
}

func TestProbeBazelRemote(t *testing.T) {
	srv := testenv.StartBazelRemote(t)
	r := dial(t, cacheConfig("bazel", srv.URL(), config.TypeStorage))
	res := probe(t, r, config.TypeStorage)
	if res.Status != remotes.StatusOK || res.Err != nil || res.Warning != "" {
		t.Fatalf("status %s, %v, %q", res.Status, res.Err, res.Warning)
	}
	c := res.Caps
	if !c.CAS || !c.GetTree || !c.BatchRead || !c.BatchUpdate || c.ReferenceStorage || c.RemoteAssetPush || c.PushAllowed != remotes.PushUnknown {
		t.Errorf("capabilities %+v: want CAS, GetTree and batches, no ReferenceStorage, no Remote Asset push, push unknown (an empty batch proves nothing)", c)
	}
	// As an index it cannot serve: the probe says so without failing.
	if res := probe(t, r, config.TypeAll); res.Status != remotes.StatusOK || !strings.Contains(res.Warning, "artifact index") {
		t.Errorf("type all: status %s, warning %q", res.Status, res.Warning)
	}
}

func TestProbeDeadPort(t *testing.T) {
	url := "http://127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	start := time.Now()
	res := probe(t, dial(t, cacheConfig("dead", url, config.TypeAll)), config.TypeAll)
	if res.Status != remotes.StatusUnreachable {
		t.Errorf("status %s (%v); want unreachable", res.Status, res.Err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("probing a dead port took %v", elapsed)
	}
	var re *remotes.Error
	if !errors.As(res.Err, &re) || re.Cache != "dead" || re.URL != url || !strings.Contains(res.Err.Error(), url) {
		t.Errorf("error %v must name the cache and its URL", res.Err)
	}
}

// blobs is test content: small blobs for batches and one larger than any
// batch, so ByteStream is used.
func testBlobs() map[digest.Digest][]byte {
	out := map[digest.Digest][]byte{}
	for _, b := range [][]byte{[]byte("one"), []byte("two"), bytes.Repeat([]byte("x"), 100000), bytes.Repeat([]byte("big!"), 1<<20)} {
		out[digest.NewFromBlob(b)] = b
	}
	return out
}

// upload sends blobs and checks that a second upload sends nothing.
func upload(t *testing.T, r *remotes.Remote, blobs map[digest.Digest][]byte) {
	t.Helper()
	var all []digest.Digest
	var size int64
	for d := range blobs {
		all = append(all, d)
		size += d.Size
	}
	sent, n, err := r.Upload(context.Background(), all, testenv.MemoryOpener(blobs), 4)
	if err != nil {
		t.Fatal(err)
	}
	if len(sent) != len(all) || n != size {
		t.Errorf("Upload sent %d blobs, %d bytes; want %d, %d", len(sent), n, len(all), size)
	}
	if sent, n, err := r.Upload(context.Background(), all, testenv.MemoryOpener(blobs), 4); err != nil || len(sent) != 0 || n != 0 {
		t.Errorf("second Upload sent %d blobs, %d bytes (%v); want nothing", len(sent), n, err)
	}
}

// checkCAS runs the CAS calls every storage cache must answer.
func checkCAS(t *testing.T, r *remotes.Remote) {
	t.Helper()
	ctx := context.Background()
	blobs := testBlobs()
	var all []digest.Digest
	for d := range blobs {
		all = append(all, d)
	}
	absent := digest.NewFromBlob([]byte("never uploaded"))
	missing, err := r.FindMissing(ctx, append(all, absent))
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != len(all)+1 {
		t.Fatalf("before upload, FindMissing = %d digests; want %d", len(missing), len(all)+1)
	}
	upload(t, r, blobs)
	missing, err = r.FindMissing(ctx, append(all, absent))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]digest.Digest{absent}, missing); diff != "" {
		t.Fatalf("after upload, FindMissing (-want +got):\n%s", diff)
	}

	var small []digest.Digest
	for d := range blobs {
		if d.Size < 1<<20-100000 {
			small = append(small, d)
		}
	}
	found, notThere, err := r.BatchRead(ctx, append(small, absent))
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != len(small) || len(notThere) != 1 || notThere[0] != absent {
		t.Errorf("BatchRead: found %d of %d, missing %v", len(found), len(small), notThere)
	}
	for d, data := range found {
		if !bytes.Equal(data, blobs[d]) {
			t.Errorf("BatchRead %s: wrong data", d)
		}
	}

	// Large blobs stream into the store's verifying writer.
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	for d := range blobs {
		w, err := store.NewWriter(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.ReadBlob(ctx, d, w); err != nil {
			w.Abort()
			t.Fatalf("ReadBlob %s: %v", d, err)
		}
		if err := w.Commit(); err != nil {
			t.Fatalf("ReadBlob %s: %v", d, err)
		}
	}
	w, _ := store.NewWriter(absent)
	if err := r.ReadBlob(ctx, absent, w); !errors.Is(err, remotes.ErrNotFound) {
		t.Errorf("ReadBlob of an absent blob = %v; want ErrNotFound", err)
	}
	w.Abort()
}

func TestCallsAgainstBstArtifactServer(t *testing.T) {
	srv := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
	r := dial(t, cacheConfig("bst1", srv.URL(), config.TypeAll))
	probe(t, r, config.TypeAll)
	checkCAS(t, r)

	ctx := context.Background()
	// bst-artifact-server reads the tree a ref names: give it a real one.
	rootData, _ := proto.Marshal(&repb.Directory{Files: []*repb.FileNode{{Name: "one.txt", Digest: digest.NewFromBlob([]byte("one")).ToProto()}}})
	root := digest.NewFromBlob(rootData)
	upload(t, r, map[digest.Digest][]byte{root: rootData})
	if _, err := r.GetReference(ctx, "demo/hello/none"); !errors.Is(err, remotes.ErrNotFound) {
		t.Errorf("GetReference of a missing ref = %v; want ErrNotFound", err)
	}
	if err := r.UpdateReference(ctx, []string{"demo/hello/strong", "demo/hello/weak"}, root); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"demo/hello/strong", "demo/hello/weak"} {
		got, err := r.GetReference(ctx, ref)
		if err != nil || got != root {
			t.Errorf("GetReference(%s) = %v, %v; want %v", ref, got, err, root)
		}
	}
	// The server stores refs in BuildStream's layout: our store reads them.
	store, err := cache.Open(srv.Dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	data, err := store.GetRef(cache.KindArtifact, "demo/hello/strong")
	if err != nil {
		t.Fatal(err)
	}
	var d repb.Digest
	if err := proto.Unmarshal(data, &d); err != nil || d.GetHash() != root.Hash {
		t.Errorf("ref on disk = %v, %v", d.GetHash(), err)
	}
	var re *remotes.Error
	if _, err := r.GetTree(ctx, root); !errors.As(err, &re) || re.Code != codes.Unimplemented {
		t.Errorf("GetTree on bst-artifact-server = %v; want UNIMPLEMENTED", err)
	}
	if _, err := r.FetchDirectory(ctx, "urn:fdc:buildstream.build:2020:v1:demo/hello/strong"); !errors.As(err, &re) || re.Code != codes.Unimplemented {
		t.Errorf("FetchDirectory on bst-artifact-server = %v; want UNIMPLEMENTED", err)
	}
}

func TestCallsAgainstBazelRemote(t *testing.T) {
	srv := testenv.StartBazelRemote(t)
	r := dial(t, cacheConfig("bazel", srv.URL(), config.TypeStorage))
	probe(t, r, config.TypeStorage)
	checkCAS(t, r)

	// A two-level tree, read back with GetTree.
	ctx := context.Background()
	file := []byte("leaf")
	child := &repb.Directory{Files: []*repb.FileNode{{Name: "leaf.txt", Digest: digest.NewFromBlob(file).ToProto()}}}
	childData, _ := proto.Marshal(child)
	root := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "sub", Digest: digest.NewFromBlob(childData).ToProto()}}}
	rootData, _ := proto.Marshal(root)
	upload(t, r, map[digest.Digest][]byte{
		digest.NewFromBlob(file): file, digest.NewFromBlob(childData): childData, digest.NewFromBlob(rootData): rootData,
	})
	dirs, err := r.GetTree(ctx, digest.NewFromBlob(rootData))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != 2 || !proto.Equal(dirs[0], root) || !proto.Equal(dirs[1], child) {
		t.Errorf("GetTree = %v", dirs)
	}
	var re *remotes.Error
	if _, err := r.GetReference(ctx, "demo/x/y"); !errors.As(err, &re) || re.Code != codes.Unimplemented || errors.Is(err, remotes.ErrNotFound) {
		t.Errorf("GetReference on bazel-remote = %v; want UNIMPLEMENTED, not a miss", err)
	}
}

// Client certificates, against bst-artifact-server and serve alike.
func TestClientCertificates(t *testing.T) {
	certs := testenv.NewCerts(t)
	servers := map[string]func() *testenv.Server{
		"bst-artifact-server": func() *testenv.Server {
			return testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{
				ServerKey: certs.ServerKey, ServerCert: certs.ServerCert, ClientCerts: certs.CA,
			})
		},
		"serve": func() *testenv.Server {
			return testenv.StartServe(t, testenv.ServeOptions{
				ServerKey: certs.ServerKey, ServerCert: certs.ServerCert, ClientCerts: certs.CA,
			})
		},
	}
	other := testenv.NewCerts(t)
	for name, startServer := range servers {
		t.Run(name, func(t *testing.T) {
			url := "https://" + startServer().Addr
			for _, tc := range []struct {
				name string
				auth config.Auth
				ok   bool
			}{
				{"client certificate", config.Auth{ServerCert: certs.CA, ClientCert: certs.ClientCert, ClientKey: certs.ClientKey}, true},
				{"no client certificate", config.Auth{ServerCert: certs.CA}, false},
				{"client certificate from another CA", config.Auth{ServerCert: certs.CA, ClientCert: other.ClientCert, ClientKey: other.ClientKey}, false},
				{"server certificate from another CA", config.Auth{ServerCert: other.CA, ClientCert: certs.ClientCert, ClientKey: certs.ClientKey}, false},
			} {
				c := cacheConfig("tls", url, config.TypeAll)
				c.Auth = tc.auth
				if res := probe(t, dial(t, c), config.TypeAll); (res.Status == remotes.StatusOK) != tc.ok {
					t.Errorf("%s: %s, %v; want ok=%v", tc.name, res.Status, res.Err, tc.ok)
				}
			}
		})
	}
}

func writeToken(t *testing.T, tok string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A Buildbarn-like frontend (Remote Asset routed to an index standing for
// bb_remote_asset, CAS to bazel-remote) accepts the empty push probes, but
// that proves nothing for the instance: push is "unknown", never "yes".
func TestProbePushUnknownWhenUnverified(t *testing.T) {
	index := testenv.StartAssetIndex(t, codes.NotFound)
	cas := testenv.StartBazelRemote(t)
	frontend := testenv.StartProxy(t, cas.Addr, testenv.ProxyFaults{Route: map[string]string{"/build.bazel.remote.asset.v1.": index.Addr}})
	res := probe(t, dial(t, cacheConfig("bb", "http://"+frontend, config.TypeAll)), config.TypeAll)
	if res.Status != remotes.StatusOK || !res.Caps.RemoteAssetPush || res.Caps.PushAllowed != remotes.PushUnknown {
		t.Errorf("probe: %s %v %+v; want Remote Asset push with push_allowed unknown", res.Status, res.Err, res.Caps)
	}
}
