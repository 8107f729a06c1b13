package server_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/server"
)

// A store past its quota's hard cap whose every object a lease holds
// cannot take a write: health says NOT_SERVING, and SERVING again once the
// leases ran out and eviction can make room.
func TestHealthQuotaFull(t *testing.T) {
	store, err := cache.Open(t.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		blob := bytes.Repeat([]byte{byte(i)}, 10<<10)
		if err := store.PutBytes(digest.NewFromBlob(blob), blob); err != nil {
			t.Fatal(err)
		}
	}
	// Objects found at start-up are leased as if just reported present:
	// 300 KiB, all held, for a quota of 100 KiB.
	srv, err := server.New(server.Options{Store: store, AllowWrites: true, Quota: 100 << 10, Lease: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	h := server.NewHealth(srv, 50*time.Millisecond)
	defer h.Close()
	wait := func(what string, ok func(error) bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !ok(h.Status()) {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("after %s: %s (status %v)", time.Since(start), what, h.Status())
			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Since(start)
	}
	wait("not NOT_SERVING with the quota full of leased objects", func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "quota is full")
	})
	took := wait("not SERVING once the leases ran out", func(err error) bool { return err == nil })
	t.Logf("SERVING again %s later", took)
	if st := srv.Stats().Quota; st == nil || !st.Known || st.Bytes != 300<<10 {
		t.Errorf("quota stats %+v, want the account known with 300 KiB", st)
	}
}
