package commands_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/linksim"
	"github.com/bst-cache/bst-cache/internal/testenv"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// The proof of issue 22's metrics and health: `serve --metrics-listen`
// scraped before and after workloads whose calls, hits, misses and bytes
// are known, through the real binary.

// startMetricsServe starts serve with --metrics-listen on a free port and
// returns it with its /metrics URL.
func startMetricsServe(t *testing.T, o testenv.ServeOptions) (*testenv.Server, string) {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	o.Args = append(o.Args, "--metrics-listen", addr)
	return testenv.StartServe(t, o), "http://" + addr
}

// callCounts counts calls a proxy saw end, by method and code, as the
// series bst_cache_grpc_requests_total names them.
type callCounts struct {
	mu sync.Mutex
	n  map[string]float64
}

func (c *callCounts) end(method string, code codes.Code) {
	svc, m, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[testenv.Series("bst_cache_grpc_requests_total", "service", svc, "method", m, "code", code.String())]++
}

func (c *callCounts) take() map[string]float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.n
	c.n = map[string]float64{}
	return out
}

// objectBytes sums the sizes of the objects in a store.
func objectBytes(t *testing.T, dir string) (n float64) {
	t.Helper()
	st, err := cache.Open(dir, cache.KindArtifact)
	if err != nil {
		t.Fatal(err)
	}
	st.WalkObjects(func(o cache.ObjectInfo) error {
		n += float64(o.Digest.Size)
		return nil
	})
	return n
}

// TestServeMetricsCountAWorkload pushes and pulls known refs with
// bst-cache through a proxy that counts the calls on the wire, then runs
// a scripted gRPC workload, and checks each scrape's counters exactly:
// requests per method and code against the proxy's count, artifact hits
// and misses, blob hits and misses, bytes in and out, compressed or not.
func TestServeMetricsCountAWorkload(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	refs := testenv.Genrefs(t, src, "-n", "3", "-files", "5", "-size", "20000")
	srv, metricsURL := startMetricsServe(t, testenv.ServeOptions{Push: true, Args: []string{"--quota", "1G"}})
	counts := &callCounts{n: map[string]float64{}}
	proxy := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{OnEnd: counts.end})
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("srv", "http://"+proxy, true))
	scrape := func() testenv.Samples { return testenv.Scrape(t, metricsURL+"/metrics") }

	// phase checks what one phase did: every request the proxy saw, and
	// no other, and the lookups and bytes given (the others unchanged).
	phase := func(name string, before, after testenv.Samples, calls map[string]float64, want map[string]float64) {
		t.Helper()
		if diff := cmp.Diff(calls, testenv.Delta(before, after, "bst_cache_grpc_requests_total")); diff != "" {
			t.Errorf("%s: requests by method and code, the proxy's count (-) against the metrics (+):\n%s", name, diff)
		}
		got := map[string]float64{}
		for _, prefix := range []string{"bst_cache_hits_total", "bst_cache_misses_total", "bst_cache_blob_bytes_total", "bst_cache_wire_bytes_total"} {
			for k, v := range testenv.Delta(before, after, prefix) {
				got[k] = v
			}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: lookups and bytes (-want +got):\n%s", name, diff)
		}
	}
	hits := func(kind string) string { return testenv.Series("bst_cache_hits_total", "kind", kind) }
	misses := func(kind string) string { return testenv.Series("bst_cache_misses_total", "kind", kind) }
	blobBytes := func(dir, enc string) string {
		return testenv.Series("bst_cache_blob_bytes_total", "direction", dir, "encoding", enc)
	}
	wireBytes := func(dir, enc string) string {
		return testenv.Series("bst_cache_wire_bytes_total", "direction", dir, "encoding", enc)
	}
	// lookups are the index lookups the proxy saw answered, as the
	// metrics count them: hits (OK) and misses (NOT_FOUND) by kind; the
	// empty probes (INVALID_ARGUMENT) are neither. bst-cache asks only for
	// artifacts: FetchBlob is a BuildStream 2 one.
	lookups := func(calls map[string]float64) map[string]float64 {
		out := map[string]float64{}
		for _, m := range [][3]string{{"build.bazel.remote.asset.v1.Fetch", "FetchDirectory", "bst1_ref"}, {"buildstream.v2.ReferenceStorage", "GetReference", "bst1_ref"}, {"build.bazel.remote.asset.v1.Fetch", "FetchBlob", "bst2_artifact"}} {
			for code, series := range map[string]string{"OK": hits(m[2]), "NotFound": misses(m[2])} {
				if n := calls[testenv.Series("bst_cache_grpc_requests_total", "service", m[0], "method", m[1], "code", code)]; n > 0 {
					out[series] += n
				}
			}
		}
		return out
	}
	// moved checks the blob bytes a phase moved in direction dir, in
	// either encoding, and returns the byte counters' changes.
	moved := func(name, dir string, before, after testenv.Samples, want float64) map[string]float64 {
		t.Helper()
		d := map[string]float64{}
		for _, prefix := range []string{"bst_cache_blob_bytes_total", "bst_cache_wire_bytes_total"} {
			for k, v := range testenv.Delta(before, after, prefix) {
				d[k] = v
			}
		}
		if got := d[blobBytes(dir, "identity")] + d[blobBytes(dir, "zstd")]; got != want {
			t.Errorf("%s: %v blob bytes %s, want %v", name, got, dir, want)
		}
		if d[blobBytes(dir, "identity")] != d[wireBytes(dir, "identity")] {
			t.Errorf("%s: %v blob bytes %s took %v on the wire, uncompressed", name, d[blobBytes(dir, "identity")], dir, d[wireBytes(dir, "identity")])
		}
		return d
	}

	// Push two of the three refs to the empty server.
	counts.take()
	before := scrape()
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", src, "push", refs[0], refs[1]); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, stderr)
	}
	after, calls := scrape(), counts.take()
	pushed := objectBytes(t, srv.Dir)
	if pushed == 0 {
		t.Fatal("the push stored nothing on the server")
	}
	want := lookups(calls)
	if want[hits("bst1_ref")] != 0 || want[misses("bst1_ref")] < 2 {
		t.Errorf("push: the proxy saw lookups %v; want each of the two refs asked for and missing", want)
	}
	maps.Copy(want, moved("push", "in", before, after, pushed))
	phase("push", before, after, calls, want)

	// Pull all three into an empty store: two hits, one miss.
	local := filepath.Join(t.TempDir(), "local")
	before = scrape()
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "pull", refs[0], refs[1], refs[2]); code != 3 {
		t.Fatalf("pull of two refs the server has and one it has not: exit %d, want 3\n%s", code, stderr)
	}
	after, calls = scrape(), counts.take()
	want = lookups(calls)
	if want[hits("bst1_ref")] != 2 || want[hits("bst2_artifact")] != 0 || want[misses("bst1_ref")] != 1 {
		t.Errorf("pull: the proxy saw lookups %v; want 2 BuildStream 1 hits and 1 miss", want)
	}
	maps.Copy(want, moved("pull", "out", before, after, objectBytes(t, local)))
	// Blob reads, whichever calls the client chose, all found: their
	// exact count is in the scripted workload below.
	if h := after[hits("blob")] - before[hits("blob")]; h > 0 {
		want[hits("blob")] = h
	} else {
		t.Errorf("pull: no blob hits")
	}
	phase("pull", before, after, calls, want)

	// A scripted workload, straight to the server, each call's answer known.
	cc := dialPlain(t, srv.Addr)
	ctx := context.Background()
	cas, bs := repb.NewContentAddressableStorageClient(cc), bsgrpc.NewByteStreamClient(cc)
	fetch, push := assetpb.NewFetchClient(cc), assetpb.NewPushClient(cc)
	refStorage := bspb.NewReferenceStorageClient(cc)
	req := func(svc, method, code string) string {
		return testenv.Series("bst_cache_grpc_requests_total", "service", svc, "method", method, "code", code)
	}
	const casSvc, bsSvc = "build.bazel.remote.execution.v2.ContentAddressableStorage", "google.bytestream.ByteStream"
	const fetchSvc, pushSvc = "build.bazel.remote.asset.v1.Fetch", "build.bazel.remote.asset.v1.Push"

	plain := bytes.Repeat([]byte("plain, sent as it is "), 1000)
	packed := bytes.Repeat([]byte("compressible, sent with zstd "), 2000)
	packedIn := bytes.Repeat([]byte("uploaded compressed "), 3000)
	enc, _ := zstd.NewWriter(nil)
	packedInZ := enc.EncodeAll(packedIn, nil)
	dPlain, dPacked, dPackedIn := digest.NewFromBlob(plain), digest.NewFromBlob(packed), digest.NewFromBlob(packedIn)
	absent := digest.NewFromBlob([]byte("never uploaded"))
	artifact, _ := proto.Marshal(&bspb.Artifact{Version: 1, StrongKey: "k", Files: digest.Empty.ToProto()})
	source, _ := proto.Marshal(&bspb.Source{Version: 1, Files: digest.Empty.ToProto()})
	dArtifact, dSource := digest.NewFromBlob(artifact), digest.NewFromBlob(source)

	before = scrape()
	// Uploads: three plain entries, one compressed.
	if _, err := cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: dPlain.ToProto(), Data: plain}, {Digest: dPacked.ToProto(), Data: packed},
		{Digest: dArtifact.ToProto(), Data: artifact}, {Digest: dSource.ToProto(), Data: source},
		{Digest: dPackedIn.ToProto(), Data: packedInZ, Compressor: repb.Compressor_ZSTD},
	}}); err != nil {
		t.Fatal(err)
	}
	// Blob reads: two found and one not in a batch; a compressed batch
	// read; a compressed ByteStream read; a ByteStream read of a blob
	// the server lacks.
	br, err := cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{dPlain.ToProto(), dArtifact.ToProto(), absent.ToProto()}})
	if err != nil {
		t.Fatal(err)
	}
	zr, err := cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{dPacked.ToProto()}, AcceptableCompressors: []repb.Compressor_Value{repb.Compressor_ZSTD}})
	if err != nil || zr.Responses[0].Compressor != repb.Compressor_ZSTD {
		t.Fatalf("compressed batch read: %v, %v", err, zr)
	}
	read := func(resource string) (n int) {
		t.Helper()
		stream, err := bs.Read(ctx, &bsgrpc.ReadRequest{ResourceName: resource})
		if err != nil {
			t.Fatal(err)
		}
		for {
			r, err := stream.Recv()
			if err == io.EOF {
				return n
			}
			if err != nil {
				t.Fatalf("read %s: %v", resource, err)
			}
			n += len(r.Data)
		}
	}
	streamed := read(fmt.Sprintf("compressed-blobs/zstd/%s/%d", dPackedIn.Hash, dPackedIn.Size))
	if n := read(fmt.Sprintf("blobs/%s/%d", dPlain.Hash, dPlain.Size)); n != len(plain) {
		t.Fatalf("read %d bytes of %s", n, dPlain)
	}
	stream, err := bs.Read(ctx, &bsgrpc.ReadRequest{ResourceName: fmt.Sprintf("blobs/%s/%d", absent.Hash, absent.Size)})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.NotFound {
		t.Fatalf("read of a blob the server lacks: %v, want NOT_FOUND", err)
	}
	// Index lookups of each kind: BuildStream 2 artifact and source, a
	// generic asset, each pushed and found, or never pushed and missed;
	// a BuildStream 1 ref under an instance name the server does not
	// serve is neither.
	for _, p := range []*assetpb.PushBlobRequest{
		{Uris: []string{buildstream.URNBst2Artifact + "p/e/1"}, BlobDigest: dArtifact.ToProto()},
		{Uris: []string{buildstream.URNBst2Source + "p/s/1"}, BlobDigest: dSource.ToProto()},
		{Uris: []string{"https://example.com/tarball.tar.gz"}, BlobDigest: dPlain.ToProto()},
	} {
		if _, err := push.PushBlob(ctx, p); err != nil {
			t.Fatalf("PushBlob %s: %v", p.Uris[0], err)
		}
	}
	for _, f := range []struct {
		uri   string
		found bool
	}{
		{buildstream.URNBst2Artifact + "p/e/1", true}, {buildstream.URNBst2Artifact + "p/e/2", false},
		{buildstream.URNBst2Source + "p/s/1", true}, {buildstream.URNBst2Source + "p/s/2", false},
		{"https://example.com/tarball.tar.gz", true}, {"https://example.com/other.tar.gz", false},
	} {
		_, err := fetch.FetchBlob(ctx, &assetpb.FetchBlobRequest{Uris: []string{f.uri}})
		if (err == nil) != f.found {
			t.Fatalf("FetchBlob %s: %v, want found=%v", f.uri, err, f.found)
		}
	}
	if _, err := refStorage.GetReference(ctx, &bspb.GetReferenceRequest{InstanceName: "nope", Key: refs[0]}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("GetReference with an unknown instance name: %v", err)
	}
	after = scrape()
	zIn, zOut := float64(len(packedInZ)), float64(len(zr.Responses[0].Data))
	size := func(ds ...digest.Digest) (n float64) {
		for _, d := range ds {
			n += float64(d.Size)
		}
		return n
	}
	if c := br.Responses[2].GetStatus().GetCode(); c != int32(codes.NotFound) || len(br.Responses[0].Data) != len(plain) {
		t.Fatalf("batch read: %v", br)
	}
	wantCalls := map[string]float64{
		req(casSvc, "BatchUpdateBlobs", "OK"): 1, req(casSvc, "BatchReadBlobs", "OK"): 2,
		req(bsSvc, "Read", "OK"): 2, req(bsSvc, "Read", "NotFound"): 1,
		req(pushSvc, "PushBlob", "OK"): 3, req(fetchSvc, "FetchBlob", "OK"): 3, req(fetchSvc, "FetchBlob", "NotFound"): 3,
		req("buildstream.v2.ReferenceStorage", "GetReference", "InvalidArgument"): 1,
	}
	want = map[string]float64{
		hits("blob"): 5, misses("blob"): 2, // batch 2+1, compressed batch 1, streams 2 + 1 missing
		hits("bst2_artifact"): 1, misses("bst2_artifact"): 1, hits("source"): 1, misses("source"): 1, hits("asset"): 1, misses("asset"): 1,
		blobBytes("in", "identity"): size(dPlain, dPacked, dArtifact, dSource), wireBytes("in", "identity"): size(dPlain, dPacked, dArtifact, dSource),
		blobBytes("in", "zstd"): size(dPackedIn), wireBytes("in", "zstd"): zIn,
		blobBytes("out", "identity"): size(dPlain, dArtifact, dPlain), wireBytes("out", "identity"): size(dPlain, dArtifact, dPlain),
		blobBytes("out", "zstd"): size(dPacked, dPackedIn), wireBytes("out", "zstd"): zOut + float64(streamed),
	}
	phase("scripted", before, after, wantCalls, want)
	if zOut >= float64(dPacked.Size) || float64(streamed) >= float64(dPackedIn.Size) {
		t.Errorf("compressed reads took %v and %v bytes for %d and %d: not compressed", zOut, streamed, dPacked.Size, dPackedIn.Size)
	}

	// The store's account and the uploads are there too.
	for _, g := range []string{"bst_cache_store_quota_bytes", "bst_cache_store_account_built", "bst_cache_store_bytes", "bst_cache_store_objects", "bst_cache_serving"} {
		if after.Get(g) <= 0 {
			t.Errorf("%s = %v, want > 0", g, after.Get(g))
		}
	}
	if got := after.Get("bst_cache_store_bytes"); got != objectBytes(t, srv.Dir) {
		t.Errorf("bst_cache_store_bytes = %v, the store holds %v", got, objectBytes(t, srv.Dir))
	}
}

// TestServeMetricsSeriesBounded sends thousands of random requests
// (random digests, refs, instance names, URIs, unknown methods, bad
// requests) and checks that the series stay few and name none of them.
func TestServeMetricsSeriesBounded(t *testing.T) {
	srv, metricsURL := startMetricsServe(t, testenv.ServeOptions{Push: true, Args: []string{"--quota", "100M", "--instance-name", "", "--instance-name", "a"}})
	cc := dialPlain(t, srv.Addr)
	ctx := context.Background()
	cas, bs := repb.NewContentAddressableStorageClient(cc), bsgrpc.NewByteStreamClient(cc)
	fetch, refStorage := assetpb.NewFetchClient(cc), bspb.NewReferenceStorageClient(cc)
	random := func(i int) string { return fmt.Sprintf("r%08x%d", uint32(i*2654435761), i) }
	const n = 3000
	var sent []string
	countSeries := func() (int, string) {
		resp, err := http.Get(metricsURL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		text, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		series := 0
		for _, line := range strings.Split(string(text), "\n") {
			if line != "" && !strings.HasPrefix(line, "#") {
				series++
			}
		}
		return series, string(text)
	}
	var early int
	for i := range n {
		if i == n/10 {
			early, _ = countSeries()
		}
		r := random(i)
		sent = append(sent, r)
		inst := []string{"", "a", r}[i%3]
		d := digest.NewFromBlob([]byte(r))
		switch i % 8 {
		case 0:
			cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{InstanceName: inst, BlobDigests: []*repb.Digest{d.ToProto()}})
		case 1:
			cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{InstanceName: inst, Digests: []*repb.Digest{d.ToProto(), {Hash: r, SizeBytes: -1}}})
		case 2:
			if s, err := bs.Read(ctx, &bsgrpc.ReadRequest{ResourceName: inst + "/blobs/" + d.Hash + "/" + strconv.FormatInt(d.Size, 10)}); err == nil {
				s.Recv()
			}
		case 3:
			if s, err := bs.Read(ctx, &bsgrpc.ReadRequest{ResourceName: r}); err == nil {
				s.Recv()
			}
		case 4:
			refStorage.GetReference(ctx, &bspb.GetReferenceRequest{InstanceName: inst, Key: "p/" + r + "/k"})
		case 5:
			fetch.FetchBlob(ctx, &assetpb.FetchBlobRequest{InstanceName: inst, Uris: []string{[]string{buildstream.URNBst2Artifact, buildstream.URNBst2Source, "https://", ""}[i/8%4] + r}})
		case 6:
			cc.Invoke(ctx, "/"+r+".Service/"+r, &repb.GetCapabilitiesRequest{}, &repb.ServerCapabilities{})
		case 7:
			cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{InstanceName: inst, Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: d.ToProto(), Data: []byte(r + "x")}}})
		}
	}
	series, body := countSeries()
	if series != early {
		t.Errorf("%d series after %d random requests, %d after %d: each kind of request seen once, more of them must add none", series, n, early, n/10)
	}
	// The fixed sets: some 30 methods by their codes seen here and 12
	// histogram series each, the Go and process collectors, the
	// server's own. Thousands of distinct requests must not add to it.
	const bound = 800
	if series > bound {
		t.Errorf("%d series after %d random requests, want at most %d", series, n, bound)
	}
	for _, r := range sent {
		if strings.Contains(body, r) {
			t.Fatalf("the metrics name %q, sent by a client", r)
		}
	}
	if testenv.Scrape(t, metricsURL+"/metrics").Get("bst_cache_grpc_requests_total", "service", "build.bazel.remote.execution.v2.ContentAddressableStorage", "method", "FindMissingBlobs", "code", "OK") == 0 {
		t.Errorf("no FindMissingBlobs counted: the workload did not reach the server\n%s", body)
	}
	t.Logf("%d series after %d random requests", series, n)
}

// TestServeHealthFlips blocks the store's writes with a directory where
// the health probe writes (which stops root too), and checks that gRPC
// health (Check, Watch, overall and named) and /healthz turn
// NOT_SERVING, then SERVING once the path is free again.
func TestServeHealthFlips(t *testing.T) {
	srv, metricsURL := startMetricsServe(t, testenv.ServeOptions{Push: true})
	cc := dialPlain(t, srv.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A first write makes the store (and its tmp directory).
	cas := repb.NewContentAddressableStorageClient(cc)
	blob := []byte("makes the store")
	if _, err := cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: digest.NewFromBlob(blob).ToProto(), Data: blob}}}); err != nil {
		t.Fatal(err)
	}
	health := healthpb.NewHealthClient(cc)
	watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	next := func() healthpb.HealthCheckResponse_ServingStatus {
		r, err := watch.Recv()
		if err != nil {
			t.Fatalf("health Watch: %v", err)
		}
		return r.Status
	}
	healthz := func() (int, string) {
		resp, err := http.Get(metricsURL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	check := func(service string) healthpb.HealthCheckResponse_ServingStatus {
		r, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatalf("health Check %q: %v", service, err)
		}
		return r.Status
	}
	const serving, notServing = healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING
	if st := next(); st != serving {
		t.Fatalf("Watch starts at %v, want SERVING", st)
	}
	probe := filepath.Join(srv.Dir, "tmp", cache.ProbeFile)
	start := time.Now()
	if err := os.Mkdir(probe, 0o755); err != nil {
		t.Fatal(err)
	}
	if st := next(); st != notServing {
		t.Fatalf("Watch after the store became unwritable: %v, want NOT_SERVING", st)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("NOT_SERVING %s after the store became unwritable, want within seconds", took)
	}
	for _, svc := range []string{"", "build.bazel.remote.execution.v2.ContentAddressableStorage", "build.bazel.remote.asset.v1.Fetch"} {
		if st := check(svc); st != notServing {
			t.Errorf("Check %q: %v, want NOT_SERVING", svc, st)
		}
	}
	if code, body := healthz(); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "NOT_SERVING\n") || !strings.Contains(body, cache.ProbeFile) {
		t.Errorf("/healthz: %d %q, want 503 NOT_SERVING naming the probe", code, body)
	}
	if g := testenv.Scrape(t, metricsURL+"/metrics").Get("bst_cache_serving"); g != 0 {
		t.Errorf("bst_cache_serving = %v while not serving", g)
	}
	if err := os.Remove(probe); err != nil {
		t.Fatal(err)
	}
	if st := next(); st != serving {
		t.Fatalf("Watch once the store is writable again: %v, want SERVING", st)
	}
	if st := check("google.bytestream.ByteStream"); st != serving {
		t.Errorf("Check ByteStream: %v, want SERVING", st)
	}
	if code, body := healthz(); code != http.StatusOK || body != "SERVING\n" {
		t.Errorf("/healthz: %d %q, want 200 SERVING", code, body)
	}
	if !strings.Contains(srv.Log(), "health: NOT_SERVING") {
		t.Errorf("the server did not say it stopped serving:\n%s", srv.Log())
	}
}

// waitMetric scrapes url until ok accepts what it finds, for up to
// limit, and returns the last scrape.
func waitMetric(t *testing.T, url string, limit time.Duration, what string, ok func(testenv.Samples) bool) testenv.Samples {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		s := testenv.Scrape(t, url)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestServeMetricsMirror pulls through `serve --upstream` from an
// upstream that is down, one that corrupts two blobs and a good one, and
// checks each upstream's series: the bytes received add up to what the
// mirror stored, the corrupt answers are counted against the liar, the
// down one is down.
func TestServeMetricsMirror(t *testing.T) {
	origin := t.TempDir()
	bst1Artifact(t, origin, "proj/big/k", 20, 8<<10, 3<<20)
	good := testenv.StartServe(t, testenv.ServeOptions{Dir: origin})
	big, small := largestObject(t, origin), objectOfSize(t, origin, 8<<10)
	liar := testenv.StartProxy(t, good.Addr, testenv.ProxyFaults{Corrupt: map[string]bool{big: true, small: true}})
	var outage atomic.Int64
	outage.Store(1 << 40)
	down := testenv.StartProxy(t, good.Addr, testenv.ProxyFaults{Unavailable: &outage})
	cfg := upstreamTOML("down", "http://"+down, "") + upstreamTOML("liar", "http://"+liar, "") + upstreamTOML("good", good.URL(), "")
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	m := startMirror(t, cfg, []string{"--metrics-listen", addr}, "down", "liar", "good")
	client := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("mirror", m.URL(), false))
	pullDone(t, client, t.TempDir(), "proj/big/k")
	pullMissing(t, client, "proj/none/k")

	s := testenv.Scrape(t, "http://"+addr+"/metrics")
	get := func(name, upstream string) float64 { return s.Get(name, "upstream", upstream) }
	stored := objectBytes(t, m.Dir)
	var received float64
	for _, u := range []string{"down", "liar", "good"} {
		received += get("bst_cache_upstream_received_bytes_total", u)
	}
	if received != stored {
		t.Errorf("the upstreams sent %v bytes of blobs, the mirror stored %v", received, stored)
	}
	if get("bst_cache_upstream_received_bytes_total", "good") < 3<<20 {
		t.Errorf("good sent %v bytes: not the big blob the liar corrupted", get("bst_cache_upstream_received_bytes_total", "good"))
	}
	if c := get("bst_cache_upstream_corrupt_total", "liar"); c < 1 || get("bst_cache_upstream_errors_total", "liar") < c {
		t.Errorf("liar: %v corrupt answers, %v errors; want at least one, counted as errors too", c, get("bst_cache_upstream_errors_total", "liar"))
	}
	if get("bst_cache_upstream_corrupt_total", "good") != 0 || get("bst_cache_upstream_errors_total", "good") != 0 {
		t.Errorf("good: errors counted against it:\n%v", s)
	}
	if get("bst_cache_upstream_down", "down") != 1 || get("bst_cache_upstream_errors_total", "down") < 1 || get("bst_cache_upstream_down", "good") != 0 {
		t.Errorf("down: down=%v errors=%v, good down=%v; want the down one down", get("bst_cache_upstream_down", "down"), get("bst_cache_upstream_errors_total", "down"), get("bst_cache_upstream_down", "good"))
	}
	// The found ref was found at liar, the first that answered; the
	// missing one missed at liar and at good.
	if get("bst_cache_upstream_hits_total", "liar") != 1 || get("bst_cache_upstream_misses_total", "liar") < 1 || get("bst_cache_upstream_misses_total", "good") < 1 {
		t.Errorf("upstream lookups: liar %v hits %v misses, good %v misses; want 1, at least 1, at least 1",
			get("bst_cache_upstream_hits_total", "liar"), get("bst_cache_upstream_misses_total", "liar"), get("bst_cache_upstream_misses_total", "good"))
	}
	if h, miss := s.Get("bst_cache_hits_total", "kind", "bst1_ref"), s.Get("bst_cache_misses_total", "kind", "bst1_ref"); h != 1 || miss < 1 {
		t.Errorf("the mirror's own lookups: %v hits, %v misses; want 1 and at least 1", h, miss)
	}
}

// TestServeMetricsReplica pushes to `serve --replicate-to b` while b is
// down, checks the journal's series (depth, age, b down), then brings b
// up and checks that they say it caught up: every entry replicated, the
// bytes sent those b holds.
func TestServeMetricsReplica(t *testing.T) {
	port, _, cfg, rdir := replicaSetup(t, "bst1", linksim.Profile{})
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	primary := startPrimary(t, cfg, "", "--metrics-listen", addr)
	url := "http://" + addr + "/metrics"
	local := t.TempDir()
	refs := bst1Artifacts(t, local, "proj/r%d/k", 3, 4, 4<<10, 64<<10, 7)
	if code, stderr := pushTo(t, primary.URL(), local, refs...); code != 0 {
		t.Fatalf("push with the replica down: exit %d\n%s", code, stderr)
	}
	get := func(s testenv.Samples, name string) float64 { return s.Get(name, "replica", "b") }
	s := waitMetric(t, url, 20*time.Second, "the replica is not seen down", func(s testenv.Samples) bool {
		return get(s, "bst_cache_replica_down") == 1 && get(s, "bst_cache_replica_failures_total") >= 1
	})
	if d := get(s, "bst_cache_replica_journal_entries"); d != float64(len(refs)) {
		t.Errorf("journal depth %v with the replica down, want %d", d, len(refs))
	}
	if age := get(s, "bst_cache_replica_journal_oldest_age_seconds"); age <= 0 {
		t.Errorf("oldest entry %v s old, want > 0", age)
	}
	if get(s, "bst_cache_replica_replicated_total") != 0 || get(s, "bst_cache_replica_sent_bytes_total") != 0 {
		t.Errorf("replicated %v, sent %v bytes to a replica that is down", get(s, "bst_cache_replica_replicated_total"), get(s, "bst_cache_replica_sent_bytes_total"))
	}

	testenv.StartServe(t, testenv.ServeOptions{Push: true, Dir: rdir, Port: port})
	waitRefs(t, rdir, refs, 30*time.Second, primary.Log)
	s = waitMetric(t, url, 20*time.Second, "the journal does not empty", func(s testenv.Samples) bool {
		return get(s, "bst_cache_replica_journal_entries") == 0
	})
	if get(s, "bst_cache_replica_replicated_total") != float64(len(refs)) || get(s, "bst_cache_replica_journal_oldest_age_seconds") != 0 || get(s, "bst_cache_replica_down") != 0 {
		t.Errorf("caught up: replicated %v (want %d), oldest %v s, down %v", get(s, "bst_cache_replica_replicated_total"), len(refs),
			get(s, "bst_cache_replica_journal_oldest_age_seconds"), get(s, "bst_cache_replica_down"))
	}
	if lag := get(s, "bst_cache_replica_last_lag_seconds"); lag <= 0 {
		t.Errorf("the last entry's lag is %v s, want > 0: it waited for the replica", lag)
	}
	if sent, held := get(s, "bst_cache_replica_sent_bytes_total"), objectBytes(t, rdir); sent != held {
		t.Errorf("%v bytes sent to the replica, it holds %v", sent, held)
	}
}

// A load balancer's health probe carries no token: gRPC health answers
// without one on a server that requires one, and only health does.
func TestServeHealthNeedsNoToken(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true, Args: []string{"--access-token", tokenFile}})
	cc := dialPlain(t, srv.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health Check without a token: %v, %v; want SERVING", r, err)
	}
	w, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	if err != nil {
		t.Errorf("health Watch without a token: %v", err)
	}
	if _, err := repb.NewCapabilitiesClient(cc).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("GetCapabilities without a token: %v, want UNAUTHENTICATED", err)
	}
}
