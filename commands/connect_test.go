package commands_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// connect-timeout bounds the probe of a cache, connecting included, both
// ways: a cache that hangs is given up after it (not after a fixed 10 s),
// and a cache slower than 10 s to give its first answer (a far site, a
// loaded server) is waited for when connect-timeout says so.
func TestConnectTimeoutBoundsTheProbe(t *testing.T) {
	origin := t.TempDir()
	bst1Artifact(t, origin, "proj/a/k", 4, 4<<10, 64<<10)
	srv := testenv.StartServe(t, testenv.ServeOptions{Dir: origin})
	withTimeout := func(name, url, timeout string) string {
		return writeConfig(t, "format = \"bst1\"\n"+strings.Replace(cacheTOML(name, url, false), `"10s"`, `"`+timeout+`"`, 1))
	}

	t.Run("a hanging cache is given up after connect-timeout", func(t *testing.T) {
		var hang atomic.Bool
		hang.Store(true)
		hung := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{Hang: &hang})
		start := time.Now()
		rep, stderr, code := runJSON(t, "--config", withTimeout("hung", "http://"+hung, "1s"), "--local", t.TempDir(), "pull", "proj/a/k")
		took := time.Since(start)
		if code != 1 || rep.Counts["failed"] != 1 {
			t.Errorf("pull from a hanging cache: exit %d, counts %v; want 1 and the ref failed\n%s", code, rep.Counts, stderr)
		}
		if !strings.Contains(stderr, "hung") || !strings.Contains(stderr, hung) {
			t.Errorf("the error does not name the cache and its URL:\n%s", stderr)
		}
		// 1 s asked; well under the 10 s the probe took whatever the
		// configuration said.
		if took > 6*time.Second {
			t.Errorf("the pull took %v with connect-timeout 1s", took)
		}
	})

	t.Run("a cache slower than 10 s to answer is waited for", func(t *testing.T) {
		var calls atomic.Int64
		slow := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{OnCall: func(string) {
			if calls.Add(1) == 1 {
				time.Sleep(12 * time.Second) // the probe's first call
			}
		}})
		rep, stderr, code := runJSON(t, "--config", withTimeout("slow", "http://"+slow, "30s"), "--local", t.TempDir(), "pull", "proj/a/k")
		if code != 0 || rep.Counts["done"] != 1 {
			t.Errorf("pull from a cache 12 s slow to answer with connect-timeout 30s: exit %d, counts %v; want 0 and the ref done\n%s", code, rep.Counts, stderr)
		}
	})
}
