package commands_test

import (
	"fmt"
	"testing"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// --bwlimit and a cache's bandwidth key cap the rate of a transfer: a push
// and a pull of 9 MiB through serve never go faster than the cap (with
// both, the lower one), and not far slower.
func TestBandwidthCap(t *testing.T) {
	const mib = 1 << 20
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	local := t.TempDir()
	bst1Artifact(t, local, "proj/capped/key", 16, 64<<10, 8*mib)
	plain := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), true))
	capped := writeConfig(t, "format = \"bst1\"\n"+fmt.Sprintf("[[cache]]\nname = \"serve\"\nurl = %q\nbandwidth = \"3MiB/s\"\n", srv.URL()))
	check := func(what string, rep pullReport, code int, stderr string, flow struct{ Blobs, Bytes int64 }, seconds float64, cap float64) {
		t.Helper()
		if code != 0 || flow.Bytes < 9*mib {
			t.Fatalf("%s: exit %d, %d bytes moved\n%s", what, code, flow.Bytes, stderr)
		}
		rate := float64(flow.Bytes) / seconds
		t.Logf("%s: %.2f MiB/s under a cap of %.2f MiB/s", what, rate/mib, cap/mib)
		// The cap is never exceeded (a limiter's 64 KiB burst is under 1%
		// of the bytes): a lower bound on the time, which load cannot
		// break. A busy machine only makes the run slower, so the other
		// bound is loose: the cap does not throttle far below itself.
		// BenchmarkLimiterRate (remotes) measures how close it gets.
		if rate > 1.02*cap {
			t.Errorf("%s: %.2f MiB/s; the cap is %.2f MiB/s", what, rate/mib, cap/mib)
		}
		if rate < cap/10 {
			t.Errorf("%s: %.2f MiB/s; want no less than a tenth of the cap, %.2f MiB/s", what, rate/mib, cap/mib)
		}
	}
	rep, stderr, code := runJSON(t, "--config", plain, "--local", local, "--bwlimit", "4MiB/s", "push", "proj/capped/key")
	check("push --bwlimit 4MiB/s", rep, code, stderr, rep.Pushed, rep.Seconds, 4*mib)
	rep, stderr, code = runJSON(t, "--config", capped, "--local", t.TempDir(), "pull", "proj/capped/key")
	check("pull from a cache with bandwidth = 3MiB/s", rep, code, stderr, rep.Pulled, rep.Seconds, 3*mib)
	rep, stderr, code = runJSON(t, "--config", capped, "--local", t.TempDir(), "--bwlimit", "16Mbit", "pull", "proj/capped/key")
	check("pull with bandwidth = 3MiB/s and --bwlimit 16Mbit", rep, code, stderr, rep.Pulled, rep.Seconds, 2e6)
}
