package commands_test

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/internal/linksim"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// push and copy to several targets (issue 20): each artifact is written
// to every target at once, each target's result is its own, and a target
// that is down, hangs or refuses fails its own results only, within the
// breaker's bound, without delaying the others'.

// multiTargets starts the targets by name: "good" (serve), "bas"
// (bst-artifact-server), "refuse" (serve without --enable-push: it answers
// writes PERMISSION_DENIED), "hung" (serve behind the fault proxy, every
// call hanging) and "dead" (a port nobody listens on). It returns their
// [[cache]] entries in the order given, push = true, and the servers
// that hold data.
func multiTargets(t *testing.T, names ...string) (string, map[string]*testenv.Server) {
	t.Helper()
	cfg := ""
	servers := map[string]*testenv.Server{}
	for _, n := range names {
		var url string
		switch n {
		case "good", "good2":
			servers[n] = testenv.StartServe(t, testenv.ServeOptions{Push: true})
			url = servers[n].URL()
		case "bas":
			servers[n] = testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
			url = servers[n].URL()
		case "refuse":
			url = testenv.StartServe(t, testenv.ServeOptions{}).URL()
		case "hung":
			var hang atomic.Bool
			hang.Store(true)
			url = "http://" + testenv.StartProxy(t, testenv.StartServe(t, testenv.ServeOptions{Push: true}).Addr, testenv.ProxyFaults{Hang: &hang})
		case "dead":
			url = fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
		default:
			t.Fatalf("no target %q", n)
		}
		cfg += cacheTOML(n, url, true)
	}
	return cfg, servers
}

// copySetup starts a serve "src" holding count artifacts as
// bst1Artifacts makes them, and the targets as multiTargets does, and
// returns the refs and a configuration naming them all.
func copySetup(t *testing.T, refFormat string, count, n, size, large int, seed uint64, targets ...string) ([]string, string, map[string]*testenv.Server) {
	t.Helper()
	dir := t.TempDir()
	refs := bst1Artifacts(t, dir, refFormat, count, n, size, large, seed)
	src := testenv.StartServe(t, testenv.ServeOptions{Dir: dir})
	cfg, servers := multiTargets(t, targets...)
	return refs, writeConfig(t, "format = \"bst1\"\n"+cacheTOML("src", src.URL(), false)+cfg), servers
}

// whenComplete runs cmd while polling the servers' refs, and says how long
// before cmd returned every server held every ref (0 if never).
func whenComplete(t *testing.T, servers []*testenv.Server, refs []string, cmd func()) (ahead time.Duration) {
	t.Helper()
	done := make(chan struct{})
	complete := make(chan time.Time, 1)
	go func() {
		for {
			all := true
			for _, s := range servers {
				on := testenv.RefsOnDisk(t, s.Dir)
				for _, r := range refs {
					all = all && slices.Contains(on, r)
				}
			}
			if all {
				complete <- time.Now()
				return
			}
			select {
			case <-done:
				close(complete)
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	cmd()
	end := time.Now()
	close(done)
	if at, ok := <-complete; ok {
		return end.Sub(at)
	}
	return 0
}

// targetStatuses is "ref@target=status" for every result, sorted.
func targetStatuses(rep pullReport) []string {
	var out []string
	for _, r := range rep.Refs {
		out = append(out, fmt.Sprintf("%s@%s=%s", r.Ref, r.Target, r.Status))
	}
	slices.Sort(out)
	return out
}

// want is targetStatuses for refs with each target's status.
func wantStatuses(refs []string, byTarget map[string]string) []string {
	var out []string
	for _, r := range refs {
		for tgt, s := range byTarget {
			out = append(out, fmt.Sprintf("%s@%s=%s", r, tgt, s))
		}
	}
	slices.Sort(out)
	return out
}

// push --all with a hanging target first, then a serve, a
// bst-artifact-server, a dead one and one refusing pushes: the live ones
// hold every ref long before the hanging one's probe gives up (10 s), each
// target has its own result per ref, and the run exits 1.
func TestPushTargetsOneHangs(t *testing.T) {
	local := t.TempDir()
	refs := bst1Artifacts(t, local, "proj/p%d/k", 4, 5, 4<<10, 256<<10, 300)
	cfg, servers := multiTargets(t, "hung", "good", "bas", "dead", "refuse")
	cfgFile := writeConfig(t, "format = \"bst1\"\n"+cfg)
	rep := liveAhead(t, []*testenv.Server{servers["good"], servers["bas"]}, refs,
		map[string]string{"good": "done", "bas": "done", "hung": "failed", "dead": "failed", "refuse": "failed"},
		append([]string{"--config", cfgFile, "--local", local, "push", "--all"}, refs...)...)
	if rep.Counts["done"] != 8 || rep.Counts["failed"] != 12 {
		t.Errorf("counts %v; want 8 done and 12 failed, one per ref and target", rep.Counts)
	}
}

// liveAhead runs a transfer with --json to the live servers and to a
// hanging target while polling the live ones, and checks that it exits
// 1, that each ref has per target the status want gives, and that the
// live servers held every ref well before the hanging target's probe gave
// up (10 s) and ended the run, which stayed within the breaker's bound.
func liveAhead(t *testing.T, live []*testenv.Server, refs []string, want map[string]string, args ...string) pullReport {
	t.Helper()
	var rep pullReport
	var stderr string
	var code int
	start := time.Now()
	ahead := whenComplete(t, live, refs, func() { rep, stderr, code = runJSON(t, args...) })
	took := time.Since(start)
	t.Logf("the run took %v; the live targets were complete %v before it ended", took, ahead)
	if code != 1 {
		t.Errorf("exit %d with targets down, want 1\n%s", code, stderr)
	}
	if got, want := targetStatuses(rep), wantStatuses(refs, want); !slices.Equal(got, want) {
		t.Errorf("results:\n got %v\nwant %v", got, want)
	}
	if ahead < 5*time.Second {
		t.Errorf("the live targets held every ref only %v before the run ended: they waited on the hanging target (its probe gives up after 10 s)", ahead)
	}
	if took > 30*time.Second {
		t.Errorf("the run took %v with a target hanging: beyond the breaker's bound", took)
	}
	return rep
}

// copy to a hanging target and two live ones: the live ones are written
// without waiting for the hanging one, the source is pulled once, and
// each target has its own result.
func TestCopyTargetsOneHangs(t *testing.T) {
	refs, cfgFile, servers := copySetup(t, "proj/c%d/k", 4, 5, 4<<10, 256<<10, 400, "hung", "good", "bas")
	rep := liveAhead(t, []*testenv.Server{servers["good"], servers["bas"]}, refs, map[string]string{"good": "done", "bas": "done", "hung": "failed"},
		append([]string{"--config", cfgFile, "--local", t.TempDir(), "copy", "--from", "src", "--to", "hung", "--to", "good", "--to", "bas"}, refs...)...)
	if rep.Pulled.Blobs != 4*8 {
		t.Errorf("pulled %d blobs; want the 32 of the 4 artifacts, once", rep.Pulled.Blobs)
	}
}

// A ref the sources lack is missing on each live target and failed on a
// dead one: one result per target, and the run exits 1 (not 3: the dead
// target could not be written whatever the sources held). With every
// target live it is missing on each, exit 3.
func TestCopyResultPerTarget(t *testing.T) {
	refs, cfgFile, _ := copySetup(t, "proj/r%d/k", 1, 3, 1<<10, 1<<10, 500, "good", "bas", "dead")
	absent := "proj/absent/k"

	rep, stderr, code := runJSON(t, "--config", cfgFile, "--local", t.TempDir(), "copy", "--from", "src", "--to", "good", "--to", "dead", refs[0], absent)
	if code != 1 {
		t.Errorf("copy with a dead target and a missing ref: exit %d, want 1\n%s", code, stderr)
	}
	want := []string{absent + "@dead=failed", absent + "@good=missing", refs[0] + "@dead=failed", refs[0] + "@good=done"}
	if got := targetStatuses(rep); !slices.Equal(got, want) {
		t.Errorf("results:\n got %v\nwant %v", got, want)
	}

	rep, stderr, code = runJSON(t, "--config", cfgFile, "--local", t.TempDir(), "copy", "--from", "src", "--to", "good", "--to", "bas", absent)
	if code != 3 || rep.Counts["missing"] != 2 {
		t.Errorf("copy of a ref no source holds to two targets: exit %d, counts %v; want exit 3 and 2 missing, one per target\n%s", code, rep.Counts, stderr)
	}
	if got, want := targetStatuses(rep), []string{absent + "@bas=missing", absent + "@good=missing"}; !slices.Equal(got, want) {
		t.Errorf("results:\n got %v\nwant %v", got, want)
	}
	_, stderr, _ = runCLI(t, "", "--config", cfgFile, "--local", t.TempDir(), "copy", "--from", "src", "--to", "good", "--to", "bas", absent)
	if !strings.Contains(stderr, "copy: 0 done, 2 missing") {
		t.Errorf("summary line does not count per target:\n%s", stderr)
	}
}

// With every target down (one dead, one refusing pushes), nothing more is
// pulled once both are known down: a copy of 16 refs one at a time pulls
// at most the few in flight when the refusing one first said no.
func TestCopyAllTargetsDown(t *testing.T) {
	refs, cfgFile, _ := copySetup(t, "proj/d%02d/k", 16, 5, 4<<10, 64<<10, 600, "dead", "refuse")
	rep, stderr, code := runJSON(t, append([]string{"--config", cfgFile, "--local", t.TempDir(), "--jobs", "1", "copy", "--from", "src", "--to", "dead", "--to", "refuse"}, refs...)...)
	if code != 1 || rep.Counts["failed"] != 32 {
		t.Errorf("copy to targets all down: exit %d, counts %v; want exit 1 and 32 failed\n%s", code, rep.Counts, stderr)
	}
	t.Logf("pulled %d blobs of %d", rep.Pulled.Blobs, 16*8)
	if rep.Pulled.Blobs > 8*8 {
		t.Errorf("pulled %d blobs (of %d) with every target down", rep.Pulled.Blobs, 16*8)
	}
}

// Slow targets are written at once: two serve targets behind links of
// 2 MiB/s each take a 3 MiB artifact at the same time, not one after the
// other.
func TestPushSlowTargetsAtOnce(t *testing.T) {
	local := t.TempDir()
	refs := bst1Artifacts(t, local, "proj/s%d/k", 1, 2, 1<<10, 3<<20, 700)
	a := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	b := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	aLink, aAddr := testenv.StartLink(t, a.Addr, linksim.Profile{Rate: 2 << 20})
	bLink, bAddr := testenv.StartLink(t, b.Addr, linksim.Profile{Rate: 2 << 20})
	cfgFile := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("a", "http://"+aAddr, true)+cacheTOML("b", "http://"+bAddr, true))
	done := make(chan struct{})
	overlap := make(chan bool, 1)
	go func() {
		mid := func(l *linksim.Link) bool {
			up, _ := l.Bytes()
			return up > 1<<20/2 && up < 5<<20/2
		}
		for {
			if mid(aLink) && mid(bLink) {
				overlap <- true
				return
			}
			select {
			case <-done:
				overlap <- false
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	_, stderr, code := runCLI(t, "", append([]string{"--config", cfgFile, "--local", local, "push", "--all"}, refs...)...)
	close(done)
	if code != 0 {
		t.Fatalf("push: exit %d\n%s", code, stderr)
	}
	if !<-overlap {
		t.Error("the two targets never took the artifact at the same time: targets written one after the other")
	}
}
