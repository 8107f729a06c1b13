package metrics_test

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/metrics"
	"github.com/bst-cache/bst-cache/server"
)

// Calls to methods the server does not serve count under "other", never
// under the name a client sent; two Metrics in one process stay apart.
func TestObserveCallLabels(t *testing.T) {
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	g := server.NewGRPC(srv, server.GRPCOptions{})
	m, other := metrics.New(), metrics.New()
	m.WatchGRPC(g)
	m.WatchServer(srv, nil)
	m.ObserveCall(&server.Call{Method: "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities", Code: codes.OK, Duration: time.Millisecond})
	m.ObserveCall(&server.Call{Method: "/evil.Service/d41d8cd98f00b204e9800998ecf8427e", Code: codes.Unimplemented})

	scrape := func(m *metrics.Metrics) string {
		rec := httptest.NewRecorder()
		m.Handler(nil).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}
	body := scrape(m)
	for _, want := range []string{
		`bst_cache_grpc_requests_total{code="OK",method="GetCapabilities",service="build.bazel.remote.execution.v2.Capabilities"} 1`,
		`bst_cache_grpc_requests_total{code="Unimplemented",method="other",service="other"} 1`,
		`bst_cache_hits_total{kind="bst2_artifact"} 0`,
		`go_goroutines `, `process_open_fds `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("no %q in\n%s", want, body)
		}
	}
	if strings.Contains(body, "evil") || strings.Contains(body, "d41d8cd98f") {
		t.Errorf("a method name a client sent is a label:\n%s", body)
	}
	if strings.Contains(scrape(other), "bst_cache_grpc_requests_total{") || strings.Contains(scrape(other), "bst_cache_hits_total") {
		t.Errorf("a second Metrics shares the first one's series:\n%s", scrape(other))
	}
	// No store account without a quota.
	if strings.Contains(body, "bst_cache_store_bytes") {
		t.Errorf("store series without a quota:\n%s", body)
	}
}

// With a quota, the room reserved for uploads in progress, the uploads
// waiting for room and the bytes eviction is removing are series beside
// the store's: an upload half sent holds its blob's size reserved.
func TestQuotaRoomSeries(t *testing.T) {
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{Store: store, AllowWrites: true, Quota: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	g := server.NewGRPC(srv, server.GRPCOptions{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	defer g.Stop()
	m := metrics.New()
	m.WatchServer(srv, nil)
	for deadline := time.Now().Add(10 * time.Second); !srv.Stats().Quota.Known; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the quota's account was not built")
		}
	}
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	data := make([]byte, 10<<10)
	d := digest.NewFromBlob(data)
	w, err := bsgrpc.NewByteStreamClient(cc).Write(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Send(&bsgrpc.WriteRequest{ResourceName: fmt.Sprintf("uploads/u/blobs/%s/%d", d.Hash, d.Size), Data: data[:100]}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); srv.Stats().ActiveUploads == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the upload did not start")
		}
	}
	rec := httptest.NewRecorder()
	m.Handler(nil).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		fmt.Sprintf("bst_cache_store_reserved_bytes %d\n", d.Size),
		"bst_cache_store_waiting_bytes 0\n",
		"bst_cache_store_removing_bytes 0\n",
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("no %q in\n%s", want, rec.Body.String())
		}
	}
	w.CloseSend()
}
