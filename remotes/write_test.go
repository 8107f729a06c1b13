package remotes_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/linksim"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
)

// A ByteStream write cut half way (UNAVAILABLE from a frontend, here the
// fault proxy) is retried under the same upload name from what the server
// says it holds: serve answers QueryWriteStatus, so the retry sends only
// the rest; bazel-remote has no upload to resume and gets the blob again.
// Both end with the blob stored. A resumed write sends the half the
// server did not take again, and what it had received but not yet
// written when the cut came (its HTTP/2 window: more on a busy machine,
// where 1.22 was seen once); one sent again from the start is at least
// 1.5 times the blob, so 1.4 still tells them apart.
func TestCutWriteResumes(t *testing.T) {
	const size = 8 << 20
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{8})
	rng.Read(data)
	d := digest.NewFromBlob(data)
	for _, tc := range []struct {
		name     string
		srv      *testenv.Server
		maxShare float64
	}{
		{"serve", testenv.StartServe(t, testenv.ServeOptions{Push: true}), 1.4},
		{"bazel-remote", testenv.StartBazelRemote(t), 2.1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The link counts what reaches the server.
			link, addr := testenv.StartLink(t, tc.srv.Addr, linksim.Profile{})
			proxy := testenv.StartProxy(t, addr, testenv.ProxyFaults{CutWrite: size / 2})
			cfg := cacheConfig(tc.name, "http://"+proxy, config.TypeStorage)
			cfg.Connection.RetryLimit = 2
			r := dial(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := r.WriteBlob(ctx, d, testenv.MemoryOpener(map[digest.Digest][]byte{d: data})); err != nil {
				t.Fatal(err)
			}
			up, _ := link.Bytes()
			share := float64(up) / size
			t.Logf("%s: %.2f times the blob reached the server for one write cut half way", tc.name, share)
			if share > tc.maxShare {
				t.Errorf("%s: %.2f times the blob reached the server; want at most %.2f", tc.name, share, tc.maxShare)
			}
			if missing, err := r.FindMissing(ctx, []digest.Digest{d}); err != nil || len(missing) != 0 {
				t.Errorf("after the write: missing %v, %v", missing, err)
			}
		})
	}
}

// A ByteStream write to a server that stops taking bytes fails once no
// chunk went out for the stall-timeout, well before the request timeout
// (which no longer bounds writes).
func TestStalledWriteFails(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	proxy := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{StallWrite: true})
	cfg := cacheConfig("stalled", "http://"+proxy, config.TypeStorage)
	cfg.Connection.StallTimeout = time.Second
	cfg.Connection.RequestTimeout = time.Minute
	r := dial(t, cfg)
	data := make([]byte, 16<<20)
	d := digest.NewFromBlob(data)
	start := time.Now()
	_, err := r.WriteBlob(context.Background(), d, testenv.MemoryOpener(map[digest.Digest][]byte{d: data}))
	took := time.Since(start)
	t.Logf("a stalled write failed after %s: %v", took.Round(time.Millisecond), err)
	if !errors.Is(err, remotes.ErrStalled) || took > 30*time.Second {
		t.Fatalf("a stalled write: %v after %s; want ErrStalled within 30s", err, took)
	}
}

// A write cut short by its caller (Ctrl-C) is an interruption, not a cache
// failure: the error is context.Canceled for errors.Is, so the ref is
// reported interrupted rather than failed.
func TestInterruptedWriteIsCanceled(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	proxy := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{StallWrite: true})
	cfg := cacheConfig("stalled", "http://"+proxy, config.TypeStorage)
	cfg.Connection.StallTimeout = time.Minute
	r := dial(t, cfg)
	data := make([]byte, 16<<20)
	d := digest.NewFromBlob(data)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(500*time.Millisecond, cancel)
	_, err := r.WriteBlob(ctx, d, testenv.MemoryOpener(map[digest.Digest][]byte{d: data}))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("a write whose caller gave up: %v; want context.Canceled", err)
	}
}
