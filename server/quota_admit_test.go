package server_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/remotes"
	"github.com/bst-cache/bst-cache/server"
)

// fullStore is a store at the hard cap of a 200 KiB quota (21 blobs of
// 10 KiB), written now: the server's start-up walk leases each for its
// lease from now, as if just reported present.
func fullStore(t *testing.T) *cache.Store {
	t.Helper()
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 21 {
		b := make([]byte, 10<<10)
		copy(b, fmt.Sprintf("stored %d", i))
		if err := store.PutBytes(digest.NewFromBlob(b), b); err != nil {
			t.Fatal(err)
		}
	}
	return store
}

// waitKnown waits for the quota's account.
func waitKnown(t *testing.T, srv *server.Server) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !srv.Stats().Quota.Known; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the quota's account was not built")
		}
	}
}

// A blob of a batch refused for now (RESOURCE_EXHAUSTED in its entry of
// the answer, the call itself OK: serve under --quota with every object
// leased) is sent again under the client's retry policy, as a refused call
// is. Under scripts/bench-load a push failed at once, its retries unused,
// when serve refused one blob of a batch after waiting for room.
func TestQuotaRefusedBatchBlobSentAgain(t *testing.T) {
	const lease = 6 * time.Second // longer than serve waits for room
	addr, _, srv := startServer(t, server.Options{Store: fullStore(t), AllowWrites: true, Quota: 200 << 10, Lease: lease})
	waitKnown(t, srv)
	r, err := remotes.Dial(context.Background(), config.Cache{
		Name: "serve", URL: "http://" + addr, Type: config.TypeStorage, MaxConcurrency: 4,
		Endpoint:   config.Endpoint{Target: addr},
		Connection: config.Connection{ConnectTimeout: 5 * time.Second, RequestTimeout: 30 * time.Second, RetryDelay: time.Second, RetryLimit: 4},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var refused atomic.Int32
	ctx := remotes.WithHooks(context.Background(), remotes.Hooks{OnRetry: func(e remotes.RetryEvent) {
		if status.Code(e.Err) == codes.ResourceExhausted || strings.Contains(e.Err.Error(), "server is full") {
			refused.Add(1)
		}
	}})
	b := []byte("a blob sent while the store is full")
	d := digest.NewFromBlob(b)
	start := time.Now()
	err = r.BatchUpdate(ctx, map[digest.Digest][]byte{d: b})
	t.Logf("batch upload: %v after %s, %d refusals retried", err, time.Since(start).Round(time.Millisecond), refused.Load())
	if err != nil {
		t.Fatalf("the blob was not sent again once the leases ran out: %v", err)
	}
	if refused.Load() == 0 {
		t.Error("the first attempt was not refused: the test did not fill the store")
	}
	if st := srv.Stats().Quota; st.Bytes > st.Limit+st.Limit/20 {
		t.Errorf("the store holds %d bytes, past its hard cap", st.Bytes)
	}
}
