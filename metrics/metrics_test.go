package metrics_test

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

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
