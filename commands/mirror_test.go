package commands_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/go-cmp/cmp"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/linksim"
	"github.com/bst-cache/bst-cache/internal/testenv"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// The proof of issue 19: `serve --upstream`, a read-through mirror, with
// real servers as upstreams and real clients (bst 1.6, bst-cache pull)
// in front of it, and upstreams that lie, hang, go down and come back
// through the fault proxy.

// upstreamTOML is one [[cache]] entry for a mirror's configuration: the
// connection settings (timeouts) the mirror uses to ask it.
func upstreamTOML(name, url, extra string) string {
	return fmt.Sprintf("[[cache]]\nname = %q\nurl = %q\n%s[cache.connection]\nretry-limit = 1\nconnect-timeout = \"3s\"\nrequest-timeout = \"3s\"\nstall-timeout = \"3s\"\n\n", name, url, extra)
}

// startMirror starts `serve --upstream NAME...` with cfg (TOML naming the
// caches) as its configuration, asking the upstreams in the order given.
func startMirror(t *testing.T, cfg string, args []string, upstreams ...string) *testenv.Server {
	t.Helper()
	for _, u := range upstreams {
		args = append(args, "--upstream", u)
	}
	return testenv.StartServe(t, testenv.ServeOptions{Env: []string{"BST_CACHE_CONFIG=" + writeConfig(t, cfg)}, Args: args})
}

// storeSnapshot is what a store holds for comparisons: every object and
// ref with its content (no temporary files, no locks).
func storeSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for rel, v := range testenv.TreeSnapshot(t, dir) {
		if strings.HasPrefix(v, "file") && !strings.Contains(rel, "tmp") && !strings.Contains(filepath.Base(rel), "lock") {
			out[rel] = v
		}
	}
	return out
}

// objectsSize is the bytes of the objects a server's store holds.
func objectsSize(t *testing.T, dir string) (size int64) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, string(filepath.Separator)+"objects"+string(filepath.Separator)) {
			if info, _ := d.Info(); info != nil {
				size += info.Size()
			}
		}
		return nil
	})
	return size
}

// objectOfSize finds a blob of size bytes in a store.
func objectOfSize(t *testing.T, dir string, size int64) string {
	t.Helper()
	var hash string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && hash == "" && !d.IsDir() && strings.Contains(p, "objects") {
			if info, _ := d.Info(); info != nil && info.Size() == size {
				hash = filepath.Base(filepath.Dir(p)) + filepath.Base(p)
			}
		}
		return nil
	})
	if hash == "" {
		t.Fatalf("no object of %d bytes under %s", size, dir)
	}
	return hash
}

// objectFile is where a server's store keeps a blob, whatever its layout;
// "" when it holds none.
func objectFile(dir, hash string) string {
	for _, objects := range []string{"cas/cas/objects", "cas/objects"} {
		if p := filepath.Join(dir, objects, hash[:2], hash[2:]); fileExists(p) {
			return p
		}
	}
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// hasObject says whether a server's store holds a blob.
func hasObject(dir, hash string) bool { return objectFile(dir, hash) != "" }

// bst1Artifacts writes count BuildStream 1 artifacts named by refFormat
// (with their index) as bst1ArtifactSeeded does, seeds from seed on, and
// returns their refs.
func bst1Artifacts(t *testing.T, dir, refFormat string, count, n, size, large int, seed uint64) []string {
	t.Helper()
	var refs []string
	for i := range count {
		ref := fmt.Sprintf(refFormat, i)
		bst1ArtifactSeeded(t, dir, ref, n, size, large, seed+uint64(i))
		refs = append(refs, ref)
	}
	return refs
}

// tmpLeft lists what a server's store keeps in its temporary directory
// (its lock file aside): a fill that failed must leave nothing.
func tmpLeft(t *testing.T, dir string) []string {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	var out []string
	for _, e := range entries {
		if e.Name() != ".lock" {
			out = append(out, e.Name())
		}
	}
	return out
}

// pullMissing pulls refs through a cache and checks that they are missing
// (exit 3), returning how long it took.
func pullMissing(t *testing.T, cfg string, refs ...string) time.Duration {
	t.Helper()
	start := time.Now()
	rep, stderr, code := runJSON(t, append([]string{"--config", cfg, "--local", t.TempDir(), "pull"}, refs...)...)
	if code != 3 || rep.Counts["missing"] != len(refs) {
		t.Errorf("pull %v: exit %d, %+v; want 3, all missing\n%s", refs, code, rep.Refs, stderr)
	}
	return time.Since(start)
}

// pullDone pulls refs through a cache into local and checks that every
// ref is done.
func pullDone(t *testing.T, cfg, local string, refs ...string) pullReport {
	t.Helper()
	rep, stderr, code := runJSON(t, append([]string{"--config", cfg, "--local", local, "pull"}, refs...)...)
	if code != 0 || rep.Counts["done"] != len(refs) {
		t.Fatalf("pull %v: exit %d, %+v; want all done\n%s", refs, code, rep.Refs, stderr)
	}
	return rep
}

// stopAndSummary stops a mirror and returns its summary line for the
// upstream name (the last line naming it).
func stopAndSummary(t *testing.T, m *testenv.Server, name string) string {
	t.Helper()
	return stopAndLastLine(t, m, "upstream "+name, "upstream \""+name+"\"")
}

// stopAndLastLine stops a serve with SIGTERM, checks that it exits 0, and
// returns the last line of its log holding any of subs.
func stopAndLastLine(t *testing.T, m *testenv.Server, subs ...string) string {
	t.Helper()
	m.Signal(syscall.SIGTERM)
	if code := m.Wait(20 * time.Second); code != 0 {
		t.Errorf("serve exited %d on SIGTERM\n%s", code, m.Log())
	}
	var last string
	for _, line := range strings.Split(m.Log(), "\n") {
		if slices.ContainsFunc(subs, func(s string) bool { return strings.Contains(line, s) }) {
			last = line
		}
	}
	if last == "" {
		t.Errorf("no line saying %q:\n%s", subs, m.Log())
	}
	return last
}

// summaryCount reads "N WORD" (WORD or its plural) from a summary line,
// -1 if absent.
func summaryCount(line, word string) int64 {
	m := regexp.MustCompile(`(\d+) ` + word + `(s|es)?\b`).FindStringSubmatch(line)
	if m == nil {
		return -1
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// bst 1.6 pulls through a mirror of a bst-artifact-server: the artifacts
// it gets are byte for byte those of a direct pull (every object and ref
// of its cache, and the checkouts), and a second bst pulls them again from
// the mirror alone once the upstream is gone.
func TestMirrorBst1FromArtifactServer(t *testing.T) {
	bas := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
	p, builder, refs := builtProject(t, bas)
	m := startMirror(t, upstreamTOML("bas", bas.URL(), ""), nil, "bas")

	direct := testenv.NewBst(t)
	direct.UseCaches(t, testenv.BstRemote{URL: bas.URL()})
	direct.Run(t, p.Dir, append([]string{"pull"}, p.Elements...)...)
	mirrored := testenv.NewBst(t)
	mirrored.UseCaches(t, testenv.BstRemote{URL: m.URL()})
	mirrored.Run(t, p.Dir, append([]string{"pull"}, p.Elements...)...)

	if diff := cmp.Diff(refs, testenv.RefsOnDisk(t, mirrored.ArtifactDir())); diff != "" {
		t.Errorf("refs bst pulled through the mirror (-built +pulled):\n%s", diff)
	}
	objects := func(b *testenv.Bst) map[string]string {
		return testenv.TreeSnapshot(t, filepath.Join(b.ArtifactDir(), "cas", "objects"))
	}
	if diff := cmp.Diff(objects(direct), objects(mirrored)); diff != "" {
		t.Errorf("bst's objects, direct pull against pull through the mirror (-direct +mirror):\n%s", diff)
	}
	for _, el := range p.Elements {
		want := testenv.TreeSnapshot(t, builder.Checkout(t, p, el))
		if diff := cmp.Diff(want, testenv.TreeSnapshot(t, mirrored.Checkout(t, p, el))); diff != "" {
			t.Errorf("checkout of %s pulled through the mirror (-built +pulled):\n%s", el, diff)
		}
	}
	checkRefsComplete(t, m.Dir)
	if got := testenv.RefsOnDisk(t, m.Dir); len(got) == 0 {
		t.Fatalf("the mirror stored no ref")
	}

	// The mirror alone: the upstream is gone, a fresh bst pulls it all.
	bas.Kill()
	again := testenv.NewBst(t)
	again.UseCaches(t, testenv.BstRemote{URL: m.URL()})
	again.Run(t, p.Dir, append([]string{"pull"}, p.Elements...)...)
	if diff := cmp.Diff(objects(direct), objects(again)); diff != "" {
		t.Errorf("bst's objects pulled from the mirror with the upstream gone (-direct +mirror):\n%s", diff)
	}
}

// bst-cache pull through a mirror of serve: BuildStream 1 and 2 refs
// (artifacts and a source, pushed with format bst2) come byte for byte as
// from a direct pull, and the mirror stores each whole.
func TestMirrorServeUpstreamPull(t *testing.T) {
	up := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	origin1, origin2 := t.TempDir(), t.TempDir()
	bst1Artifact(t, origin1, "proj/one/k1", 20, 8<<10, 2<<20)
	bst1ArtifactSeeded(t, origin1, "proj/two/k2", 20, 8<<10, 1<<20, 7)
	bst2Store(t, origin2)
	upCfg := writeConfig(t, cacheTOML("up", up.URL(), true))
	for _, push := range [][]string{
		{"--format", "bst1", "--local", origin1, "push", "proj/one/k1", "proj/two/k2"},
		{"--format", "bst2", "--local", origin2, "push", "proj/elem/key1"},
		{"--format", "bst2", "--local", origin2, "push", "--kind", "source", "proj/elem/srckey"},
	} {
		if _, stderr, code := runCLI(t, "", append([]string{"--config", upCfg}, push...)...); code != 0 {
			t.Fatalf("%v: exit %d\n%s", push, code, stderr)
		}
	}
	m := startMirror(t, upstreamTOML("up", up.URL(), ""), nil, "up")

	for _, tc := range []struct {
		format string
		args   []string
	}{
		{"bst1", []string{"pull", "proj/one/k1", "proj/two/k2"}},
		{"bst2", []string{"pull", "proj/elem/key1"}},
		{"bst2", []string{"pull", "--with-buildtrees", "proj/elem/key1"}},
		{"bst2", []string{"pull", "--kind", "source", "proj/elem/srckey"}},
	} {
		t.Run(tc.format+" "+strings.Join(tc.args[1:], " "), func(t *testing.T) {
			direct, mirrored := t.TempDir(), t.TempDir()
			for dir, url := range map[string]string{direct: up.URL(), mirrored: m.URL()} {
				cfg := writeConfig(t, fmt.Sprintf("format = %q\n", tc.format)+cacheTOML("c", url, false))
				stdout, stderr, code := runCLI(t, "", append([]string{"--config", cfg, "--local", dir}, tc.args...)...)
				if code != 0 {
					t.Fatalf("%v from %s: exit %d\n%s%s", tc.args, url, code, stdout, stderr)
				}
			}
			want := storeSnapshot(t, direct)
			if len(want) == 0 {
				t.Fatal("the direct pull stored nothing")
			}
			if diff := cmp.Diff(want, storeSnapshot(t, mirrored)); diff != "" {
				t.Errorf("direct pull against pull through the mirror (-direct +mirror):\n%s", diff)
			}
		})
	}
	checkRefsComplete(t, m.Dir)

	// What the mirror stored is whole: with the upstream gone, the same
	// pulls succeed from the mirror alone.
	up.Kill()
	cfg1 := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("c", m.URL(), false))
	cfg2 := writeConfig(t, "format = \"bst2\"\n"+cacheTOML("c", m.URL(), false))
	pullDone(t, cfg1, t.TempDir(), "proj/one/k1", "proj/two/k2")
	pullDone(t, cfg2, t.TempDir(), "proj/elem/key1")
	local := t.TempDir()
	if _, stderr, code := runCLI(t, "", "--config", cfg2, "--local", local, "pull", "--kind", "source", "proj/elem/srckey"); code != 0 {
		t.Errorf("source from the mirror alone: exit %d\n%s", code, stderr)
	}
}

// bazel-remote as storage (type = "storage") with the index elsewhere (an
// asset index standing for bb_remote_asset): the mirror resolves refs in
// the index, takes their blobs from bazel-remote, and a pull through it is
// a direct pull's bytes.
func TestMirrorBazelRemoteStorage(t *testing.T) {
	bazel := testenv.StartBazelRemote(t)
	index := testenv.StartAssetIndex(t, codes.NotFound)
	origin := t.TempDir()
	bst1Artifact(t, origin, "proj/one/k1", 30, 8<<10, 3<<20)
	bst1ArtifactSeeded(t, origin, "proj/two/k2", 10, 1<<10, 64<<10, 9)
	refs := []string{"proj/one/k1", "proj/two/k2"}
	split := upstreamTOML("idx", index.URL(), "type = \"index\"\n") + upstreamTOML("bazel", "grpc://"+bazel.Addr, "type = \"storage\"\n")
	pushCfg := writeConfig(t, "format = \"bst1\"\n"+strings.ReplaceAll(split, "[cache.connection]", "push = true\n[cache.connection]"))
	if _, stderr, code := runCLI(t, "", append([]string{"--config", pushCfg, "--local", origin, "push", "--cache", "idx", "--cache", "bazel"}, refs...)...); code != 0 {
		t.Fatalf("push to index and bazel-remote: exit %d\n%s", code, stderr)
	}
	m := startMirror(t, split, nil, "idx", "bazel")

	direct, mirrored := t.TempDir(), t.TempDir()
	pullDone(t, writeConfig(t, "format = \"bst1\"\n"+split), direct, refs...)
	pullDone(t, writeConfig(t, "format = \"bst1\"\n"+cacheTOML("mirror", m.URL(), false)), mirrored, refs...)
	if diff := cmp.Diff(storeSnapshot(t, direct), storeSnapshot(t, mirrored)); diff != "" {
		t.Errorf("direct pull from index and bazel-remote against pull through the mirror (-direct +mirror):\n%s", diff)
	}
	checkRefsComplete(t, m.Dir)
	if got := testenv.RefsOnDisk(t, m.Dir); len(got) != len(refs) {
		t.Errorf("the mirror holds refs %v; want %v", got, refs)
	}
	// As serve's, the mirror's new directory takes the layout of the
	// first artifact written (BuildStream 1's: bst-artifact-server's).
	if layout, _ := cache.DetectLayout(m.Dir); layout != cache.KindBst1Artifact {
		t.Errorf("a new mirror directory filled with BuildStream 1 artifacts alone has the %q layout; want bst1", layout)
	}
}

// An upstream that sends a corrupt blob: the blob is not stored, the next
// upstream is asked, and the corrupt answer is counted against the liar.
// One whose artifact lacks a blob on every upstream: NOT_FOUND, and the
// mirror names no ref.
func TestMirrorLyingUpstream(t *testing.T) {
	origin := t.TempDir()
	bst1Artifact(t, origin, "proj/big/k", 20, 8<<10, 3<<20)
	good := testenv.StartServe(t, testenv.ServeOptions{Dir: origin})
	big := largestObject(t, origin)
	// A small blob too: it comes in a batch, the big one streamed.
	small := objectOfSize(t, origin, 8<<10)
	liar := testenv.StartProxy(t, good.Addr, testenv.ProxyFaults{Corrupt: map[string]bool{big: true, small: true}})
	holes := testenv.StartProxy(t, good.Addr, testenv.ProxyFaults{Hide: map[string]bool{big: true}})

	t.Run("corrupt", func(t *testing.T) {
		m := startMirror(t, upstreamTOML("liar", "http://"+liar, "")+upstreamTOML("good", good.URL(), ""), nil, "liar", "good")
		local := t.TempDir()
		pullDone(t, writeConfig(t, "format = \"bst1\"\n"+cacheTOML("mirror", m.URL(), false)), local, "proj/big/k")
		for _, dir := range []string{local, m.Dir} {
			for _, h := range []string{big, small} {
				data, err := os.ReadFile(objectFile(dir, h))
				if err != nil || fmt.Sprintf("%x", sha256.Sum256(data)) != h {
					t.Errorf("%s: blob %s is absent or does not match its digest (%v)", dir, h, err)
				}
			}
		}
		checkRefsComplete(t, m.Dir)
		line := stopAndSummary(t, m, "liar")
		if n := summaryCount(line, "error"); n < 1 {
			t.Errorf("the corrupt blob is not counted against liar: %q\n%s", line, m.Log())
		}
	})

	t.Run("incomplete everywhere", func(t *testing.T) {
		m := startMirror(t, upstreamTOML("holes", "http://"+holes, "")+upstreamTOML("liar", "http://"+liar, ""), nil, "holes", "liar")
		pullMissing(t, writeConfig(t, "format = \"bst1\"\n"+cacheTOML("mirror", m.URL(), false)), "proj/big/k")
		refMissTime(t, m.Addr, "proj/big/k") // as bst 1.6 asks: NOT_FOUND too
		if got := testenv.RefsOnDisk(t, m.Dir); len(got) != 0 {
			t.Errorf("the mirror names %v without its blobs", got)
		}
		if hasObject(m.Dir, big) {
			t.Error("the mirror stored the corrupt blob")
		}
	})
}

// An upstream that hangs (accepts calls, never answers): a warm pull does
// not wait on it; the mirror answers what needs no upstream at once (the
// empty Directory, which every bst-cache client's probe asks GetTree
// for); a cold pull through it does not
// hang past the upstream's request timeout and the next upstream answers,
// and once the hanging one is known down a cold miss is answered within a
// second.
func TestMirrorHangingUpstream(t *testing.T) {
	origin := t.TempDir()
	bst1Artifact(t, origin, "proj/a/k", 10, 4<<10, 256<<10)
	bst1ArtifactSeeded(t, origin, "proj/b/k", 10, 4<<10, 256<<10, 5)
	good := testenv.StartServe(t, testenv.ServeOptions{Dir: origin})
	var hang atomic.Bool
	hung := testenv.StartProxy(t, good.Addr, testenv.ProxyFaults{Hang: &hang})
	m := startMirror(t, upstreamTOML("hung", "http://"+hung, "")+upstreamTOML("good", good.URL(), ""), nil, "hung", "good")
	// warm fills from hung alone while it answers; then it hangs.
	warm := startMirror(t, upstreamTOML("hung", "http://"+hung, ""), nil, "hung")
	warmCfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("warm", warm.URL(), false))
	pullDone(t, warmCfg, t.TempDir(), "proj/a/k")
	hang.Store(true)

	// Local hits never wait on an upstream: a warm pull (the client's
	// probe included) is done before the upstream's request timeout.
	start := time.Now()
	pullDone(t, warmCfg, t.TempDir(), "proj/a/k")
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a warm pull took %v with the upstream hanging: it waited on the upstream (request timeout 3s)", d)
	}
	if d := emptyTreeTime(t, m.Addr); d > time.Second {
		t.Errorf("GetTree of the empty Directory took %v with an upstream hanging; want < 1s (it needs no upstream)", d)
	}
	// A client with the default connect timeout (10s; the upstream's
	// request timeout is 3s).
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("mirror", m.URL(), false))
	start = time.Now()
	pullDone(t, cfg, t.TempDir(), "proj/a/k")
	first := time.Since(start)
	t.Logf("first pull with the first upstream hanging: %v", first)
	if first > 30*time.Second {
		t.Errorf("a pull through the mirror took %v with an upstream hanging (its request timeout 3s)", first)
	}
	// The hanging upstream is now known down: misses are answered without
	// waiting for it.
	for i := range 3 {
		if d := refMissTime(t, m.Addr, fmt.Sprintf("proj/absent/%d", i)); i == 2 && d > time.Second {
			t.Errorf("a cold miss with the first upstream hanging took %v after it was known down; want < 1s", d)
		}
	}
	start = time.Now()
	pullDone(t, cfg, t.TempDir(), "proj/b/k")
	t.Logf("second pull: %v", time.Since(start))
}

// dialPlain connects to a server over plaintext until the test ends.
func dialPlain(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// emptyTreeTime asks for the tree of the empty Directory, as a bst-cache
// client's probe does, and returns how long the answer took.
func emptyTreeTime(t *testing.T, addr string) time.Duration {
	t.Helper()
	cc := dialPlain(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cas := repb.NewContentAddressableStorageClient(cc)
	cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{}) // connected: the time measured is the mirror's
	start := time.Now()
	stream, err := cas.GetTree(ctx, &repb.GetTreeRequest{RootDigest: digest.NewFromBlob(nil).ToProto()})
	if err == nil {
		for err == nil {
			_, err = stream.Recv()
		}
	}
	if err != io.EOF && status.Code(err) != codes.NotFound {
		t.Errorf("GetTree of the empty Directory: %v", err)
	}
	return time.Since(start)
}

// refMissTime asks the mirror for a bst1 ref it does not hold through
// ReferenceStorage (as bst 1.6 does), checks the answer is NOT_FOUND and
// returns how long it took.
func refMissTime(t *testing.T, addr, ref string) time.Duration {
	t.Helper()
	cc := dialPlain(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := bspb.NewReferenceStorageClient(cc)
	// Connect first: the time measured is the mirror's.
	c.Status(ctx, &bspb.StatusRequest{})
	start := time.Now()
	_, err := c.GetReference(ctx, &bspb.GetReferenceRequest{Key: ref})
	d := time.Since(start)
	if status.Code(err) != codes.NotFound {
		t.Errorf("GetReference %s: %v; want NOT_FOUND", ref, err)
	}
	return d
}

// Eight clients pulling the same cold artifacts through the mirror at once
// cause one upstream fetch per blob: the bytes crossing the upstream's link
// are at most 1.05x those of one direct pull.
func TestMirrorOneFetchPerBlob(t *testing.T) {
	const clients = 8
	origin := t.TempDir()
	refs := bst1Artifacts(t, origin, "proj/art%d/k", 4, 40, 16<<10, 1<<20, 20)
	up := testenv.StartServe(t, testenv.ServeOptions{Dir: origin})
	directLink, directAddr := testenv.StartLink(t, up.Addr, linksim.Profile{})
	upLink, upAddr := testenv.StartLink(t, up.Addr, linksim.Profile{})
	pullDone(t, writeConfig(t, "format = \"bst1\"\n"+cacheTOML("direct", "http://"+directAddr, false)), t.TempDir(), refs...)
	dUp, dDown := directLink.Bytes()
	one := dUp + dDown

	m := startMirror(t, upstreamTOML("up", "http://"+upAddr, ""), nil, "up")
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("mirror", m.URL(), false))
	bin := testenv.BstCacheBinary(t)
	var wg sync.WaitGroup
	errs := make([]string, clients)
	for i := range clients {
		local := t.TempDir()
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append([]string{"--config", cfg, "--local", local, "pull"}, refs...)...)
			cmd.Env = append(os.Environ(), "HOME="+local)
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Sprintf("client %d: %v\n%s", i, err, out)
			}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Error(e)
		}
	}
	mUp, mDown := upLink.Bytes()
	t.Logf("one direct pull: %d bytes on the link; %d clients through the mirror: %d bytes on the upstream's link (%.3fx)", one, clients, mUp+mDown, float64(mUp+mDown)/float64(one))
	if float64(mUp+mDown) > 1.05*float64(one) {
		t.Errorf("%d clients through the mirror: %d bytes crossed the upstream's link; one copy is %d (want <= 1.05x)", clients, mUp+mDown, one)
	}
	checkRefsComplete(t, m.Dir)
}

// The breaker: with the upstream killed, warm pulls still succeed, a cold
// ref is missing (exit 3) and, once the upstream is known down, NOT_FOUND
// within a second; after it comes back on the same port it is used again.
func TestMirrorUpstreamDown(t *testing.T) {
	origin := t.TempDir()
	bst1Artifact(t, origin, "proj/warm/k", 10, 4<<10, 512<<10)
	bst1ArtifactSeeded(t, origin, "proj/cold/k", 10, 4<<10, 512<<10, 3)
	up := testenv.StartServe(t, testenv.ServeOptions{Dir: origin})
	m := startMirror(t, upstreamTOML("up", up.URL(), ""), nil, "up")
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("mirror", m.URL(), false))
	pullDone(t, cfg, t.TempDir(), "proj/warm/k")

	up.Kill()
	start := time.Now()
	pullDone(t, cfg, t.TempDir(), "proj/warm/k")
	t.Logf("warm pull with the upstream down: %v", time.Since(start))
	t.Logf("cold pull with the upstream down: %v", pullMissing(t, cfg, "proj/cold/k"))
	for i := range 3 {
		if d := refMissTime(t, m.Addr, "proj/cold/k"); i == 2 && d > time.Second {
			t.Errorf("a cold miss with the upstream known down took %v; want < 1s", d)
		}
	}
	if got := testenv.RefsOnDisk(t, m.Dir); len(got) != 1 {
		t.Errorf("the mirror holds %v; want the warm ref alone", got)
	}

	// Back on the same port: the cold ref comes once the breaker probes.
	_, port, _ := net.SplitHostPort(up.Addr)
	portNum, _ := strconv.Atoi(port)
	testenv.StartServe(t, testenv.ServeOptions{Dir: origin, Port: portNum})
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, _, code := runCLI(t, "", "--config", cfg, "--local", t.TempDir(), "pull", "proj/cold/k")
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the upstream back up was not asked again within 60s (last pull exit %d)\n%s", code, m.Log())
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("the upstream was used again %v after it came back", time.Since(deadline.Add(-60*time.Second)))
}

// The quota: artifacts the mirror fetched are evicted whole, least
// recently used first, and the store stays under --quota (past it only
// between a fill and its eviction, never past the hard cap of half the
// quota again); a blob larger than the quota is served through without
// being stored, so it evicts nothing, and an artifact holding one is a
// miss.
func TestMirrorQuota(t *testing.T) {
	const quota, hardCap = 4 << 20, 6 << 20
	origin := t.TempDir()
	refs := bst1Artifacts(t, origin, "proj/q%d/k", 8, 8, 16<<10, 900<<10, 40)
	huge := largeArtifact(t, origin, "proj/huge/k", 6<<20, 77)
	up := testenv.StartServe(t, testenv.ServeOptions{Dir: origin})
	m := startMirror(t, upstreamTOML("up", up.URL(), ""), []string{"--quota", strconv.Itoa(quota)}, "up")
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("mirror", m.URL(), false))

	underQuota := func(t *testing.T, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for objectsSize(t, m.Dir) > quota {
			if time.Now().After(deadline) {
				t.Errorf("%s: the mirror holds %d bytes of objects 10s later; the quota is %d", what, objectsSize(t, m.Dir), quota)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	var held []string
	t.Run("evicts whole artifacts", func(t *testing.T) {
		peak := samplePeak(t, m.Dir)
		for _, ref := range refs {
			pullDone(t, cfg, t.TempDir(), ref)
			underQuota(t, "after "+ref)
		}
		checkRefsComplete(t, m.Dir)
		held = testenv.RefsOnDisk(t, m.Dir)
		t.Logf("the mirror holds %v; at most %d bytes of objects under a quota of %d", held, peak(), quota)
		if len(held) == 0 || len(held) == len(refs) {
			t.Errorf("the mirror holds %v after pulling %d artifacts of ~1 MiB under a %d-byte quota; want some evicted, the latest kept", held, len(refs), quota)
		} else if held[len(held)-1] != refs[len(refs)-1] {
			t.Errorf("the latest artifact was evicted: the mirror holds %v", held)
		}
		if p := peak(); p > hardCap {
			t.Errorf("the mirror held %d bytes of objects at its peak; the quota is %d (hard cap %d)", p, quota, hardCap)
		}
	})
	t.Run("blob larger than the quota read alone", func(t *testing.T) {
		// A ByteStream read of it from a fresh mirror, as BuildStream 2
		// reads a large file.
		fresh := startMirror(t, upstreamTOML("up", up.URL(), ""), []string{"--quota", strconv.Itoa(quota)}, "up")
		n, _, _, sum, err := readBlob(t, fresh.Addr, huge)
		if err != nil || n != huge.Size || sum != huge.Hash {
			t.Errorf("read of a blob larger than the quota: %d bytes, %v", n, err)
		}
		if hasObject(fresh.Dir, huge.Hash) {
			t.Error("the mirror stored a blob larger than its quota")
		}
	})
	t.Run("artifact with a blob larger than the quota", func(t *testing.T) {
		// The mirror keeps no blob larger than its quota, so it cannot
		// hold the artifact whole: a miss, which a client whose next cache
		// is the upstream itself falls through to.
		peak := samplePeak(t, m.Dir)
		pullMissing(t, cfg, "proj/huge/k")
		local := t.TempDir()
		both := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("mirror", m.URL(), false)+cacheTOML("up", up.URL(), false))
		if rep := pullDone(t, both, local, "proj/huge/k"); rep.Refs[0].Cache != "up" {
			t.Errorf("the artifact came from %s, want the upstream", rep.Refs[0].Cache)
		}
		if !hasObject(local, huge.Hash) {
			t.Error("the blob larger than the quota did not reach the client")
		}
		if hasObject(m.Dir, huge.Hash) {
			t.Error("the mirror stored a blob larger than its quota")
		}
		underQuota(t, "after the huge artifact")
		checkRefsComplete(t, m.Dir)
		after := testenv.RefsOnDisk(t, m.Dir)
		t.Logf("the mirror holds %v, %v before; at most %d bytes of objects meanwhile", after, held, peak())
		if p := peak(); p > hardCap {
			t.Errorf("the mirror held %d bytes of objects at its peak (quota %d, hard cap %d)", p, quota, hardCap)
		}
		if len(held) > 0 && !slices.Contains(after, held[len(held)-1]) {
			t.Errorf("a miss for an artifact larger than the quota evicted the most recent artifact %s: the mirror held %v, now %v", held[len(held)-1], held, after)
		}
	})
}

// samplePeak samples the bytes of objects a server's store holds until
// the test ends; the function returned gives the largest seen so far.
func samplePeak(t *testing.T, dir string) func() int64 {
	var peak atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if n := objectsSize(t, dir); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return func() int64 {
		if n := objectsSize(t, dir); n > peak.Load() {
			peak.Store(n)
		}
		return peak.Load()
	}
}

// readBlob reads a blob through ByteStream from a server: the bytes it
// got, when the first came and the last, their sha256 (hex) and the
// status the stream ended with (nil for OK).
func readBlob(t *testing.T, addr string, d digest.Digest) (n int64, first, total time.Duration, sum string, err error) {
	t.Helper()
	cc := dialPlain(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	stream, err := bsgrpc.NewByteStreamClient(cc).Read(ctx, &bsgrpc.ReadRequest{ResourceName: fmt.Sprintf("blobs/%s/%d", d.Hash, d.Size)})
	if err != nil {
		return 0, 0, 0, "", err
	}
	h := sha256.New()
	for {
		resp, err := stream.Recv()
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return n, first, time.Since(start), fmt.Sprintf("%x", h.Sum(nil)), err
		}
		if n == 0 && len(resp.Data) > 0 {
			first = time.Since(start)
		}
		n += int64(len(resp.Data))
		h.Write(resp.Data)
	}
}

// Streaming: a cold ByteStream read starts sending before the blob is all
// fetched (the upstream sits behind a 4 MiB/s link), and when the upstream
// corrupts it the read ends with DATA_LOSS and the mirror stores nothing,
// then or when asked again.
func TestMirrorStreamsAndDataLoss(t *testing.T) {
	const size = 8 << 20
	origin := t.TempDir()
	big := largeArtifact(t, origin, "proj/stream/k", size, 11)
	up := testenv.StartServe(t, testenv.ServeOptions{Dir: origin})
	_, slowAddr := testenv.StartLink(t, up.Addr, linksim.Profile{Rate: 4 << 20})
	liar := testenv.StartProxy(t, slowAddr, testenv.ProxyFaults{Corrupt: map[string]bool{big.Hash: true}})
	m := startMirror(t, upstreamTOML("slow", "http://"+slowAddr, "compression = \"off\"\n"), nil, "slow")
	lm := startMirror(t, upstreamTOML("liar", "http://"+liar, "compression = \"off\"\n"), nil, "liar")

	n, first, total, sum, err := readBlob(t, m.Addr, big)
	t.Logf("cold read of %d bytes through a 4 MiB/s upstream: first bytes after %v, all after %v", n, first, total)
	if err != nil || n != size || sum != big.Hash {
		t.Fatalf("cold read: %d bytes, %v", n, err)
	}
	if first > total/2 {
		t.Errorf("the cold read sent its first bytes after %v of %v: it waited for the fetch instead of streaming", first, total)
	}
	if !hasObject(m.Dir, big.Hash) {
		t.Error("the mirror did not store the blob it streamed")
	}

	n, _, _, _, err = readBlob(t, lm.Addr, big)
	if status.Code(err) != codes.DataLoss {
		t.Errorf("cold read of a blob the upstream corrupts: %d bytes, %v; want DATA_LOSS", n, err)
	}
	if hasObject(lm.Dir, big.Hash) {
		t.Error("the mirror stored the corrupt blob")
	}
	if left := tmpLeft(t, lm.Dir); len(left) != 0 {
		t.Errorf("the failed fill left %v in the mirror's tmp", left)
	}
	// Asked again, the only upstream corrupts it again or is skipped for
	// it: a loss or a miss, never the blob, never stored.
	if n, _, _, _, err := readBlob(t, lm.Addr, big); status.Code(err) != codes.DataLoss && status.Code(err) != codes.NotFound {
		t.Errorf("second read of the corrupt blob: %d bytes, %v; want DATA_LOSS or NOT_FOUND", n, err)
	}
	if hasObject(lm.Dir, big.Hash) {
		t.Error("the mirror stored the corrupt blob on the second read")
	}
}
