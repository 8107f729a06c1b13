package commands_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/linksim"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// Replicas other than serve (issue 20's proof): a bst-artifact-server,
// and bazel-remote as the storage beside a Remote Asset index (the asset
// index standing for bb_remote_asset, as in TestMirrorBazelRemoteStorage).

// bst 1.6 builds and pushes to a serve that replicates to a
// bst-artifact-server: the replica gets every ref and every object the
// primary holds, never names a ref it lacks a blob of (the poller), and a
// fresh bst pulls from it alone the artifacts it built, byte for byte.
func TestReplicateToArtifactServer(t *testing.T) {
	bas := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("b", bas.URL(), true))
	primary := startPrimary(t, cfg, "")
	stop := pollComplete(t, bas.Dir)
	p, builder, refs := builtProject(t, primary)
	waitRefs(t, bas.Dir, refs, 30*time.Second, primary.Log)
	stop()
	if got, want := storeSnapshot(t, bas.Dir), storeSnapshot(t, primary.Dir); !mapsEqualUnder(got, want, "cas") {
		t.Errorf("the bst-artifact-server's objects and refs differ from the primary's")
	}

	fresh := testenv.NewBst(t)
	fresh.UseCaches(t, testenv.BstRemote{URL: bas.URL()})
	fresh.Run(t, p.Dir, append([]string{"pull"}, p.Elements...)...)
	if diff := cmp.Diff(refs, testenv.RefsOnDisk(t, fresh.ArtifactDir())); diff != "" {
		t.Errorf("refs bst pulled from the replica (-built +pulled):\n%s", diff)
	}
	for _, el := range p.Elements {
		want := testenv.TreeSnapshot(t, builder.Checkout(t, p, el))
		if diff := cmp.Diff(want, testenv.TreeSnapshot(t, fresh.Checkout(t, p, el))); diff != "" {
			t.Errorf("checkout of %s pulled from the replica (-built +pulled):\n%s", el, diff)
		}
	}
}

// A serve replicating to a split cache, an index (type = "index") and
// bazel-remote as its storage (type = "storage"): every blob reaches
// bazel-remote before the index names the artifact (a poller asks
// bazel-remote for the closure of every entry the index holds, throughout),
// and a pull from the pair alone is a pull from the primary, byte for byte.
func TestReplicateToBazelRemote(t *testing.T) {
	bazel := testenv.StartBazelRemote(t)
	index := testenv.StartAssetIndex(t, codes.NotFound)
	split := upstreamTOML("idx", index.URL(), "type = \"index\"\npush = true\n") +
		upstreamTOML("bazel", "grpc://"+bazel.Addr, "type = \"storage\"\npush = true\n")
	cfg := writeConfig(t, "format = \"bst1\"\n"+split)
	primary := testenv.StartServe(t, testenv.ServeOptions{Push: true, Env: []string{"BST_CACHE_CONFIG=" + cfg},
		Args: []string{"--replicate-to", "idx", "--replicate-to", "bazel"}})
	origin := t.TempDir()
	refs := bst1Artifacts(t, origin, "proj/z%d/k", 6, 8, 4<<10, 512<<10, 1100)

	stop := pollIndexComplete(t, index, bazel.Addr, origin)
	if code, stderr := pushTo(t, primary.URL(), origin, refs...); code != 0 {
		t.Fatalf("push to the primary: exit %d\n%s", code, stderr)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(journaled(t, primary.Dir, "idx"))+len(journaled(t, primary.Dir, "bazel")) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s the primary still journals work for the replicas\n%s", primary.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()

	direct, fromPrimary := t.TempDir(), t.TempDir()
	pullDone(t, writeConfig(t, "format = \"bst1\"\n"+split), direct, refs...)
	pullDone(t, writeConfig(t, "format = \"bst1\"\n"+cacheTOML("p", primary.URL(), false)), fromPrimary, refs...)
	if diff := cmp.Diff(storeSnapshot(t, fromPrimary), storeSnapshot(t, direct)); diff != "" {
		t.Errorf("pull from the primary against pull from the index and bazel-remote (-primary +replicas):\n%s", diff)
	}
}

// pollIndexComplete asks, every few milliseconds until the returned stop
// is called, whether bazel-remote (at addr) holds the whole closure (read
// from the store origin) of every artifact the index names: an index
// entry may never come before its blobs.
func pollIndexComplete(t *testing.T, index *testenv.AssetIndex, addr, origin string) (stop func()) {
	t.Helper()
	st, err := cache.Open(origin, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cas := repb.NewContentAddressableStorageClient(conn)
	checked := map[string]bool{} // each entry is checked when it appears
	check := func() {
		for uri, d := range index.Entries() {
			root := digest.NewFromProtoUnvalidated(d)
			if checked[root.String()] {
				continue
			}
			all, missing, err := st.Closure(root)
			if err != nil || len(missing) > 0 {
				t.Errorf("the index names %s for %s, which the pushed store does not hold whole", root, uri)
				continue
			}
			req := &repb.FindMissingBlobsRequest{}
			for _, b := range all {
				if b.Size > 0 {
					req.BlobDigests = append(req.BlobDigests, b.ToProto())
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := cas.FindMissingBlobs(ctx, req)
			cancel()
			checked[root.String()] = true
			if err != nil {
				t.Errorf("FindMissingBlobs on bazel-remote: %v", err)
			} else if n := len(resp.GetMissingBlobDigests()); n > 0 {
				t.Errorf("the index names %s for %s while bazel-remote lacks %d of its %d blobs", root, uri, n, len(req.BlobDigests))
			}
		}
	}
	stopPoll := poll(check)
	return func() {
		stopPoll()
		if len(checked) == 0 {
			t.Errorf("the index names nothing")
		}
	}
}

// journaled lists the refs the primary's journal for a replica holds.
func journaled(t *testing.T, primaryDir, replica string) []string {
	t.Helper()
	dir := filepath.Join(primaryDir, "replication", replica)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("the primary's journal for %s: %v", replica, err)
	}
	var refs []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // done meanwhile
		}
		if _, ref, ok := strings.Cut(strings.TrimSpace(string(data)), "\n"); ok {
			refs = append(refs, ref)
		}
	}
	slices.Sort(refs)
	return refs
}

// The journal's bound end to end: with the replica down, 20 artifacts
// are pushed to a primary whose journal holds 8 (--replicate-journal): the
// oldest are dropped, and the log says how many; the replica, back, gets
// what the journal kept, and serve -v says per replica what is done,
// queued, failed and the lag (at least the time the replica was down);
// then a sync from the primary moves exactly what was dropped, and the
// replica holds everything.
func TestReplicateJournalBound(t *testing.T) {
	port, _, cfg, rdir := replicaSetup(t, "bst1", linksim.Profile{})
	pdir := filepath.Join(t.TempDir(), "primary")
	primary := startPrimary(t, cfg, pdir, "--replicate-journal", "8")
	local := t.TempDir()
	refs := bst1Artifacts(t, local, "proj/j%02d/k", 20, 4, 4<<10, 64<<10, 1200)
	for i := 0; i < len(refs); i += 5 {
		if code, stderr := pushTo(t, primary.URL(), local, refs[i:i+5]...); code != 0 {
			t.Fatalf("push with the replica down: exit %d, want 0\n%s", code, stderr)
		}
	}
	kept := journaled(t, pdir, "b")
	var dropped []string
	for _, r := range refs {
		if !slices.Contains(kept, r) {
			dropped = append(dropped, r)
		}
	}
	// Entries being moved (an attempt on the replica, down) are not
	// dropped: the journal may hold a few more than its bound.
	if len(dropped) == 0 || !slices.Equal(kept[len(kept)-5:], refs[15:]) {
		t.Fatalf("the journal holds %v with a bound of 8; want the oldest of the 20 dropped, the newest kept\n%s", kept, primary.Log())
	}
	warned := regexp.MustCompile(`replication: replica b: journal full \(bound 8 refs\): dropped the oldest \d+ refs? .*, (\d+) dropped since the start; a .bst-cache sync. from this cache to b recovers them`).FindAllStringSubmatch(primary.Log(), -1)
	if len(warned) == 0 || warned[len(warned)-1][1] != strconv.Itoa(len(dropped)) {
		t.Errorf("serve's log does not say that %d refs were dropped:\n%s", len(dropped), primary.Log())
	}

	time.Sleep(time.Second) // the lag: at least this
	testenv.StartServe(t, testenv.ServeOptions{Push: true, Dir: rdir, Port: port})
	deadline := time.Now().Add(30 * time.Second)
	for len(journaled(t, pdir, "b")) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if diff := cmp.Diff(kept, testenv.RefsOnDisk(t, rdir)); diff != "" {
		t.Fatalf("the replica back holds other refs than the journal kept (-kept +replica):\n%s\n%s", diff, primary.Log())
	}
	caughtUp := regexp.MustCompile(`replication: replica b \(\S+\): (\d+) refs? replicated, \d+ attempts? failed, (\d+) refs? dropped, 0 refs queued; \d+ blobs \(\d+ bytes\) sent; lag (\S+): caught up`).FindAllStringSubmatch(primary.Log(), -1)
	if len(caughtUp) == 0 {
		t.Fatalf("serve -v does not say per replica what it replicated, dropped, queued and the lag:\n%s", primary.Log())
	}
	last := caughtUp[len(caughtUp)-1]
	lag, err := time.ParseDuration(last[3])
	if last[1] != strconv.Itoa(len(kept)) || last[2] != strconv.Itoa(len(dropped)) || err != nil || lag < time.Second {
		t.Errorf("serve -v says %q; want %d replicated, %d dropped, a lag of at least 1s (the replica was down that long)", last[0], len(kept), len(dropped))
	}
	if !regexp.MustCompile(`replication: replica b \(\S+\): 0 refs replicated, \d+ attempts? failed, \d+ refs? dropped, \d+ refs? queued \(the oldest \d+s ago\)`).MatchString(primary.Log()) {
		t.Errorf("serve -v said nothing of the work queued while the replica was down:\n%s", primary.Log())
	}

	syncCfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("p", primary.URL(), false)+cacheTOML("b", fmt.Sprintf("http://127.0.0.1:%d", port), true))
	rep, stderr, code := runJSON(t, "--config", syncCfg, "--local", t.TempDir(), "sync", "--from", "p", "--to", "b")
	var moved []string
	for _, r := range rep.Refs {
		if r.Status == "done" {
			moved = append(moved, r.Ref)
		}
	}
	slices.Sort(moved)
	if code != 0 || rep.Counts["skipped"] != len(kept) {
		t.Errorf("sync after the drop: exit %d, %v; want %d skipped\n%s", code, rep.Counts, len(kept), stderr)
	}
	if diff := cmp.Diff(dropped, moved); diff != "" {
		t.Errorf("sync moved other refs than the journal dropped (-dropped +moved):\n%s", diff)
	}
	if diff := cmp.Diff(refs, testenv.RefsOnDisk(t, rdir)); diff != "" {
		t.Errorf("the replica after the sync (-pushed +replica):\n%s", diff)
	}
	checkRefsComplete(t, rdir)
	if line := stopAndLastLine(t, primary, "replica b ("); !strings.Contains(line, fmt.Sprintf(" %d refs dropped", len(dropped))) {
		t.Errorf("serve's summary %q does not say %d refs were dropped", line, len(dropped))
	}
}
