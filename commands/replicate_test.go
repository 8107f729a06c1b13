package commands_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/linksim"
	"github.com/bst-cache/bst-cache/internal/testenv"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// The proof of `serve --replicate-to` (issue 20): a primary serve that
// forwards what clients push to a replica serve, which is down, comes back
// on the same port, or sees the primary killed with SIGKILL; a poller on
// the replica throughout never sees a ref whose blobs are not all there.

// replicaSetup returns a free port for the replica "b", nobody listening
// yet, the link to it that counts the bytes sent (with profile p), a
// configuration of format naming b through that link, and b's store.
func replicaSetup(t *testing.T, format string, p linksim.Profile) (port int, link *linksim.Link, cfg, dir string) {
	t.Helper()
	port = testenv.FreePort(t)
	link, addr := testenv.StartLink(t, fmt.Sprintf("127.0.0.1:%d", port), p)
	cfg = writeConfig(t, "format = \""+format+"\"\n"+cacheTOML("b", "http://"+addr, true))
	return port, link, cfg, filepath.Join(t.TempDir(), "replica")
}

// startPrimary starts `serve --enable-push --replicate-to b` over dir with
// cfg as its configuration, and more flags.
func startPrimary(t *testing.T, cfg, dir string, args ...string) *testenv.Server {
	t.Helper()
	return testenv.StartServe(t, testenv.ServeOptions{Push: true, Dir: dir,
		Env: []string{"BST_CACHE_CONFIG=" + cfg}, Args: append([]string{"--replicate-to", "b"}, args...)})
}

// pushTo pushes refs from local to the serve at url and returns the exit
// code and stderr.
func pushTo(t *testing.T, url, local string, refs ...string) (int, string) {
	t.Helper()
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("primary", url, true))
	_, stderr, code := runCLI(t, "", append([]string{"--config", cfg, "--local", local, "push"}, refs...)...)
	return code, stderr
}

// pollComplete checks the replica's store every few milliseconds until
// the returned stop is called: no ref may ever name a blob it lacks.
func pollComplete(t *testing.T, dir string) (stop func()) {
	t.Helper()
	return poll(func() { checkRefsComplete(t, dir) })
}

// poll runs check every few milliseconds until the returned stop is
// called, which runs it once more.
func poll(check func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			check()
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() { close(done); wg.Wait(); check() }
}

// waitRefs waits up to limit until the store in dir holds every ref, and
// says how long it took.
func waitRefs(t *testing.T, dir string, refs []string, limit time.Duration, log func() string) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		on := testenv.RefsOnDisk(t, dir)
		if !slices.ContainsFunc(refs, func(r string) bool { return !slices.Contains(on, r) }) {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("after %v the replica holds %d of the %d refs\n%s", limit, len(on), len(refs), log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// journalDepth counts the entries of the primary's journal for b.
func journalDepth(t *testing.T, primaryDir string) int {
	t.Helper()
	return len(journaled(t, primaryDir, "b"))
}

// The replica is down while 30 artifacts are pushed to the primary: every
// push exits 0 and the work is journaled; the replica started on the same
// port gets every artifact, complete, within 30 s, blobs before refs (the
// poller), and the journal is empty after.
func TestReplicateReplicaDownCatchesUp(t *testing.T) {
	port, link, cfg, rdir := replicaSetup(t, "bst1", linksim.Profile{})
	primary := startPrimary(t, cfg, "")
	local := t.TempDir()
	refs := bst1Artifacts(t, local, "proj/r%d/k", 30, 6, 4<<10, 256<<10, 500)
	for i := 0; i < len(refs); i += 10 {
		if code, stderr := pushTo(t, primary.URL(), local, refs[i:i+10]...); code != 0 {
			t.Fatalf("push to the primary with the replica down: exit %d, want 0\n%s", code, stderr)
		}
	}
	if n := journalDepth(t, primary.Dir); n != len(refs) {
		t.Errorf("the journal holds %d entries with the replica down; want %d", n, len(refs))
	}

	stop := pollComplete(t, rdir)
	testenv.StartServe(t, testenv.ServeOptions{Push: true, Dir: rdir, Port: port})
	took := waitRefs(t, rdir, refs, 30*time.Second, primary.Log)
	stop()
	t.Logf("the replica held all %d artifacts %v after it came back", len(refs), took)
	payload := objectsSize(t, primary.Dir)
	if got := objectsSize(t, rdir); got != payload {
		t.Errorf("the replica holds %d bytes of objects, the primary %d", got, payload)
	}
	if up, _ := link.Bytes(); float64(up) > 1.1*float64(payload) {
		t.Errorf("%d bytes sent to the replica for a payload of %d: more than 1.1x", up, payload)
	} else {
		t.Logf("%d bytes sent to the replica for a payload of %d (%.3fx)", up, payload, float64(up)/float64(payload))
	}
	deadline := time.Now().Add(10 * time.Second)
	for journalDepth(t, primary.Dir) != 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := journalDepth(t, primary.Dir); n != 0 {
		t.Errorf("the journal still holds %d entries once the replica holds them all", n)
	}
	line := stopAndLastLine(t, primary, "replica b (")
	if summaryCount(line, "ref") != int64(len(refs)) || !strings.Contains(line, "0 refs queued") {
		t.Errorf("summary %q; want %d refs replicated, 0 queued", line, len(refs))
	}
	if !strings.Contains(primary.Log(), "0 refs queued; ") || !strings.Contains(primary.Log(), ": caught up") {
		t.Errorf("serve -v said nothing of the replica catching up:\n%s", primary.Log())
	}
}

// The primary is killed with SIGKILL with its journal full (the replica
// down), restarted with the replica up behind a slow link and killed again
// while it replicates, then restarted once more: the replica ends with
// every artifact, complete at every moment, and what was sent twice is at
// most what was in flight at the kill.
func TestReplicateKilledPrimaryLosesNothing(t *testing.T) {
	port, link, cfg, rdir := replicaSetup(t, "bst1", linksim.Profile{Rate: 4 << 20})
	pdir := filepath.Join(t.TempDir(), "primary")
	primary := startPrimary(t, cfg, pdir)
	local := t.TempDir()
	refs := bst1Artifacts(t, local, "proj/k%d/k", 20, 6, 4<<10, 1<<20, 600)
	if code, stderr := pushTo(t, primary.URL(), local, refs...); code != 0 {
		t.Fatalf("push to the primary with the replica down: exit %d, want 0\n%s", code, stderr)
	}
	primary.Kill()
	if n := journalDepth(t, pdir); n != len(refs) {
		t.Fatalf("after kill -9 the journal holds %d entries; want %d", n, len(refs))
	}

	stop := pollComplete(t, rdir)
	testenv.StartServe(t, testenv.ServeOptions{Push: true, Dir: rdir, Port: port})
	primary = startPrimary(t, cfg, pdir)
	for len(testenv.RefsOnDisk(t, rdir)) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	primary.Kill()
	t.Logf("killed the primary with %d of %d refs on the replica and %d journaled", len(testenv.RefsOnDisk(t, rdir)), len(refs), journalDepth(t, pdir))

	primary = startPrimary(t, cfg, pdir)
	took := waitRefs(t, rdir, refs, 30*time.Second, primary.Log)
	stop()
	t.Logf("the replica held every artifact %v after the second restart", took)
	payload := objectsSize(t, pdir)
	up, _ := link.Bytes()
	t.Logf("%d bytes sent to the replica for a payload of %d (%.3fx)", up, payload, float64(up)/float64(payload))
	if float64(up) > 1.5*float64(payload) {
		t.Errorf("%d bytes sent to the replica for a payload of %d: more than was in flight at the kill sent again", up, payload)
	}
	if got, want := storeSnapshot(t, rdir), storeSnapshot(t, pdir); !mapsEqualUnder(got, want, "cas") {
		t.Errorf("the replica's objects and refs differ from the primary's")
	}
}

// mapsEqualUnder compares two store snapshots below prefix.
func mapsEqualUnder(a, b map[string]string, prefix string) bool {
	sub := func(m map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			if strings.HasPrefix(k, prefix+string(filepath.Separator)) {
				out[k] = v
			}
		}
		return out
	}
	x, y := sub(a), sub(b)
	if len(x) != len(y) || len(x) == 0 {
		return false
	}
	for k, v := range x {
		if y[k] != v {
			return false
		}
	}
	return true
}

// --replicate-policy all: a push while the replica is down fails (the
// primary stores and journals it nonetheless), and the replica gets it
// once it is back; with the replica up, a push succeeds and the replica
// holds the artifact when the push returns.
func TestReplicatePolicyAll(t *testing.T) {
	port, _, cfg, rdir := replicaSetup(t, "bst1", linksim.Profile{})
	primary := startPrimary(t, cfg, "", "--replicate-policy", "all")
	local := t.TempDir()
	refs := bst1Artifacts(t, local, "proj/a%d/k", 2, 4, 4<<10, 64<<10, 700)
	code, stderr := pushTo(t, primary.URL(), local, refs[0])
	if code == 0 || !strings.Contains(stderr, "not replicated") {
		t.Fatalf("push with policy all and the replica down: exit %d; want a failure saying it was not replicated\n%s", code, stderr)
	}

	stop := pollComplete(t, rdir)
	testenv.StartServe(t, testenv.ServeOptions{Push: true, Dir: rdir, Port: port})
	waitRefs(t, rdir, refs[:1], 30*time.Second, primary.Log)
	// The breaker let a probe through (the worker's): the replica is
	// known up again.
	if code, stderr := pushTo(t, primary.URL(), local, refs[1]); code != 0 {
		t.Fatalf("push with policy all and the replica up: exit %d\n%s", code, stderr)
	}
	if on := testenv.RefsOnDisk(t, rdir); !slices.Contains(on, refs[1]) {
		t.Errorf("policy all: the push returned before the replica held %s (it holds %v)", refs[1], on)
	}
	stop()
}

// BuildStream 2 artifacts pushed with their dependencies (Remote Asset
// PushBlob, both keys of each) reach the replica whole: every ref, and a
// pull from the replica alone of the app with its dependencies.
func TestReplicateBst2(t *testing.T) {
	port, _, cfg, rdir := replicaSetup(t, "bst2", linksim.Profile{})
	testenv.StartServe(t, testenv.ServeOptions{Push: true, Dir: rdir, Port: port})
	primary := startPrimary(t, cfg, "")
	origin := t.TempDir()
	s, err := cache.Open(origin, cache.KindBst2Artifact)
	if err != nil {
		t.Fatal(err)
	}
	dep := &bspb.Artifact_Dependency{ProjectName: "proj", ElementName: "base.bst", CacheKey: "b1"}
	bst2Artifact(t, s, "proj", "base", "b1", "b1w")
	app := bst2Artifact(t, s, "proj", "app", "a1", "a1w", dep)
	clientCfg := writeConfig(t, "format = \"bst2\"\n"+cacheTOML("primary", primary.URL(), true))
	replicaCfg := writeConfig(t, "format = \"bst2\"\n"+cacheTOML("b", fmt.Sprintf("http://127.0.0.1:%d", port), false))
	if _, stderr, code := runCLI(t, "", "--config", clientCfg, "--local", origin, "push", "--cache", "primary", "--deps", "all", app); code != 0 {
		t.Fatalf("push --deps all to the primary: exit %d\n%s", code, stderr)
	}
	want := []string{"proj/app/a1", "proj/app/a1w", "proj/base/b1", "proj/base/b1w"}
	deadline := time.Now().Add(30 * time.Second)
	for !slices.Equal(bst2Refs(t, rdir), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the replica holds %v after 30 s; want %v\n%s", bst2Refs(t, rdir), want, primary.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	local := t.TempDir()
	if _, stderr, code := runCLI(t, "", "--config", replicaCfg, "--local", local, "pull", "--deps", "build", "proj/app/a1w"); code != 0 {
		t.Fatalf("pull from the replica alone: exit %d\n%s", code, stderr)
	}
	if diff := cmp.Diff([]string{"proj/app/a1", "proj/app/a1w", "proj/base/b1", "proj/base/b1w"}, bst2Refs(t, local)); diff != "" {
		t.Errorf("refs pulled from the replica (-want +got):\n%s", diff)
	}
}

// A replica that hangs every call (the fault proxy) costs the clients of
// the primary nothing with policy any: pushes return at once, journaled;
// once the replica answers again the work reaches it.
func TestReplicateHangingReplica(t *testing.T) {
	var hang atomic.Bool
	hang.Store(true)
	replica := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	proxy := testenv.StartProxy(t, replica.Addr, testenv.ProxyFaults{Hang: &hang})
	cfg := writeConfig(t, "format = \"bst1\"\n"+upstreamTOML("b", "http://"+proxy, "push = true\n"))
	primary := startPrimary(t, cfg, "")
	local := t.TempDir()
	refs := bst1Artifacts(t, local, "proj/h%d/k", 5, 4, 4<<10, 64<<10, 800)
	start := time.Now()
	for _, ref := range refs {
		if code, stderr := pushTo(t, primary.URL(), local, ref); code != 0 {
			t.Fatalf("push with the replica hanging: exit %d\n%s", code, stderr)
		}
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("5 pushes took %v with the replica hanging: they waited on it", took)
	}
	hang.Store(false)
	took := waitRefs(t, replica.Dir, refs, 30*time.Second, primary.Log)
	t.Logf("the replica held every ref %v after it stopped hanging", took)
	checkRefsComplete(t, replica.Dir)
}

// With --upstream too, a site is both: what it fills from upstream on a
// read stays local, what clients write goes out to the replica.
func TestReplicateWithUpstream(t *testing.T) {
	origin := t.TempDir()
	bst1Artifact(t, origin, "proj/up/k", 4, 4<<10, 64<<10)
	up := testenv.StartServe(t, testenv.ServeOptions{Dir: origin})
	replica := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	cfg := writeConfig(t, "format = \"bst1\"\n"+upstreamTOML("up", up.URL(), "")+cacheTOML("b", replica.URL(), true))
	primary := startPrimary(t, cfg, "", "--upstream", "up")
	pullDone(t, writeConfig(t, "format = \"bst1\"\n"+cacheTOML("primary", primary.URL(), false)), t.TempDir(), "proj/up/k")
	local := t.TempDir()
	refs := bst1Artifacts(t, local, "proj/w%d/k", 1, 4, 4<<10, 64<<10, 900)
	if code, stderr := pushTo(t, primary.URL(), local, refs...); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, stderr)
	}
	waitRefs(t, replica.Dir, refs, 30*time.Second, primary.Log)
	if on := testenv.RefsOnDisk(t, replica.Dir); !slices.Equal(on, refs) {
		t.Errorf("the replica holds %v; want what was written, %v, not what was filled from upstream", on, refs)
	}
}
