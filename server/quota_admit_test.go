package server_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
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

// An upload waiting for room gives up as soon as its client does: its
// call ends at once (not after the wait's 5 s) and the room it waited for
// is no longer counted.
func TestQuotaCancelledUploadStopsWaiting(t *testing.T) {
	srv, err := server.New(server.Options{Store: fullStore(t), AllowWrites: true, Quota: 200 << 10, Lease: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan time.Duration, 1)
	g := server.NewGRPC(srv, server.GRPCOptions{OnCall: []func(*server.Call){func(c *server.Call) {
		if strings.HasSuffix(c.Method, "ByteStream/Write") {
			ended <- c.Duration
		}
	}}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	defer func() { g.Stop(); srv.Close() }()
	waitKnown(t, srv)
	c := connect(t, l.Addr().String())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	data := make([]byte, 10<<10)
	d := digest.NewFromBlob(data)
	s, err := c.bs.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&bsgrpc.WriteRequest{ResourceName: fmt.Sprintf("uploads/w/blobs/%s/%d", d.Hash, d.Size), Data: data[:100]}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(4 * time.Second); srv.Stats().Quota.Waiting != d.Size; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the upload is not waiting for room: %+v", srv.Stats().Quota)
		}
	}
	cancel()
	cancelled := time.Now()
	select {
	case took := <-ended:
		t.Logf("the call ended %s after the client cancelled it (%s in all)", time.Since(cancelled).Round(time.Millisecond), took.Round(time.Millisecond))
	case <-time.After(2 * time.Second):
		t.Fatal("the upload still waits for room 2 s after its client cancelled it")
	}
	if st := srv.Stats().Quota; st.Waiting != 0 || st.Reserved != 0 {
		t.Errorf("after the cancelled upload: %d bytes waiting, %d reserved; want none", st.Waiting, st.Reserved)
	}
}

// A batch upload on a full store is admitted as one reservation and waits
// for room once (serve's admitWait, 5 s), not once a blob: a batch of 50
// blobs on a store whose leases hold every object is refused whole after
// one wait (it waited 5 s a blob, 250 s, before), even when it is larger
// than a tenth of the quota and admitted in parts; one that room frees
// for during the wait is stored whole. Either way no room stays reserved.
func TestQuotaBatchWaitsOnce(t *testing.T) {
	const admitWait = 5 * time.Second
	for _, c := range []struct {
		name  string
		lease time.Duration
		want  codes.Code
	}{
		{"refused", time.Hour, codes.ResourceExhausted},
		{"admitted", 2 * time.Second, codes.OK},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr, _, srv := startServer(t, server.Options{Store: fullStore(t), AllowWrites: true, Quota: 200 << 10, Lease: c.lease})
			waitKnown(t, srv)
			req := &repb.BatchUpdateBlobsRequest{}
			for i := range 50 { // 50 KiB: three parts of at most 20 KiB
				b := make([]byte, 1<<10)
				copy(b, fmt.Sprint("batch blob ", i))
				req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: digest.NewFromBlob(b).ToProto(), Data: b})
			}
			ctx, cancel := context.WithTimeout(context.Background(), 4*admitWait)
			defer cancel()
			start := time.Now()
			resp, err := connect(t, addr).cas.BatchUpdateBlobs(ctx, req)
			took := time.Since(start)
			if err != nil {
				t.Fatalf("BatchUpdateBlobs: %v after %s", err, took.Round(time.Millisecond))
			}
			t.Logf("a batch of %d blobs on a full store answered after %s", len(req.Requests), took.Round(time.Millisecond))
			if took > 2*admitWait {
				t.Errorf("the batch took %s: more than one wait for room (%s)", took.Round(time.Millisecond), admitWait)
			}
			for i, r := range resp.GetResponses() {
				if got := codes.Code(r.GetStatus().GetCode()); got != c.want {
					t.Errorf("blob %d: %s %q; want %s", i, got, r.GetStatus().GetMessage(), c.want)
				}
			}
			st := srv.Stats().Quota
			if st.Reserved != 0 || st.Waiting != 0 {
				t.Errorf("after the batch: %d bytes reserved, %d waiting; want none", st.Reserved, st.Waiting)
			}
			if st.Bytes > st.Limit+st.Limit/20 {
				t.Errorf("the store holds %d bytes, past its hard cap", st.Bytes)
			}
		})
	}
}

// A batch upload waiting for room waits for all its blobs at once (one
// reservation: the room series shows the whole part waiting, not one
// blob), and gives the room up as soon as its client cancels the call.
func TestQuotaBatchWaitsAsOne(t *testing.T) {
	addr, _, srv := startServer(t, server.Options{Store: fullStore(t), AllowWrites: true, Quota: 200 << 10, Lease: time.Hour})
	waitKnown(t, srv)
	req := &repb.BatchUpdateBlobsRequest{}
	for i := range 30 { // a first part of 20 KiB (a tenth of the quota), then 10 KiB
		b := make([]byte, 1<<10)
		copy(b, fmt.Sprint("waiting blob ", i))
		req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: digest.NewFromBlob(b).ToProto(), Data: b})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := connect(t, addr).cas.BatchUpdateBlobs(ctx, req)
		done <- err
	}()
	for deadline := time.Now().Add(4 * time.Second); srv.Stats().Quota.Waiting != 20<<10; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the batch's first part does not wait as one: %+v", srv.Stats().Quota)
		}
	}
	cancel()
	<-done
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st := srv.Stats().Quota
		if st.Waiting == 0 && st.Reserved == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("2 s after its client cancelled it the batch holds %d bytes waiting, %d reserved", st.Waiting, st.Reserved)
		}
	}
}
