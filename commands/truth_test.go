package commands_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
)

// runJSON runs bst-cache with --json and decodes the transfer report.
func runJSON(t *testing.T, args ...string) (pullReport, string, int) {
	t.Helper()
	stdout, stderr, code := runCLI(t, "", append([]string{"--json"}, args...)...)
	var rep pullReport
	if err := decodeDoc(stdout, &rep); err != nil {
		t.Fatalf("%v: --json output: %v\n%s\n%s", args, err, stdout, stderr)
	}
	return rep, stderr, code
}

// statuses lists "ref=status" (with "@target" for pushes) in report order.
func statuses(rep pullReport) string {
	var out []string
	for _, r := range rep.Refs {
		s := r.Status
		if r.Target != "" {
			s += "@" + r.Target
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

// writeFile writes content to a new file in a temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// An outage is not a miss: with a cache that cannot be asked (unreachable,
// refusing our token, or our missing client certificate), pull, copy and
// which report the ref failed and exit 1, naming the cache; only when
// every cache answered is a ref missing (exit 3).
func TestOutageIsNotAMiss(t *testing.T) {
	certs := testenv.NewCerts(t)
	tokenSrv := testenv.StartServe(t, testenv.ServeOptions{Args: []string{"--access-token", writeFile(t, "token", "right-token\n")}})
	tlsSrv := testenv.StartServe(t, testenv.ServeOptions{ServerKey: certs.ServerKey, ServerCert: certs.ServerCert, ClientCerts: certs.CA})
	good := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	dead := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
	wrongToken := writeFile(t, "wrong", "wrong-token\n")

	broken := map[string]string{
		"unreachable":    cacheTOML("broken", dead, false),
		"wrong-token":    cacheTOML("broken", tokenSrv.URL(), false) + fmt.Sprintf("[cache.auth]\naccess-token = %q\n\n", wrongToken),
		"no-client-cert": cacheTOML("broken", "https://"+tlsSrv.Addr, false) + fmt.Sprintf("[cache.auth]\nserver-cert = %q\n\n", certs.CA),
	}
	const ref = "demo/absent/0123"
	for name, brokenTOML := range broken {
		t.Run(name, func(t *testing.T) {
			cfg := writeConfig(t, "format = \"bst1\"\n"+brokenTOML+cacheTOML("good", good.URL(), true))
			local := t.TempDir()
			rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "pull", ref)
			if code != 1 || statuses(rep) != "failed" || !strings.Contains(rep.Refs[0].Reason, "could not ask") ||
				!strings.Contains(rep.Refs[0].Reason, "cache broken") || !strings.Contains(rep.Refs[0].Reason, "not in good") {
				t.Errorf("pull: exit %d, %s, %+v; want 1, failed, naming what was not found where and the cache not asked\n%s", code, statuses(rep), rep.Refs, stderr)
			}
			rep, stderr, code = runJSON(t, "--config", cfg, "--local", local, "copy", "--from", "broken", "--to", "good", ref)
			if code != 1 || statuses(rep) != "failed@good" {
				t.Errorf("copy: exit %d, %s; want 1, failed@good\n%s", code, statuses(rep), stderr)
			}
			_, stderr, code = runCLI(t, "", "--config", cfg, "which", ref)
			if code != 1 {
				t.Errorf("which: exit %d; want 1\n%s", code, stderr)
			}
		})
	}
	// Every cache answered: missing, exit 3.
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("good", good.URL(), true))
	rep, stderr, code := runJSON(t, "--config", cfg, "--local", t.TempDir(), "pull", ref)
	if code != 3 || statuses(rep) != "missing" || !strings.Contains(rep.Refs[0].Reason, "not in good") {
		t.Errorf("pull with every cache answering: exit %d, %+v; want 3, missing\n%s", code, rep.Refs, stderr)
	}
	if _, stderr, code := runCLI(t, "", "--config", cfg, "which", ref); code != 3 {
		t.Errorf("which with every cache answering: exit %d; want 3\n%s", code, stderr)
	}
}

// removeObject deletes a blob from a server's store directory, as an
// eviction would.
func removeObject(t *testing.T, dir, hash string) {
	t.Helper()
	for _, objects := range []string{"cas/cas/objects", "cas/objects"} {
		if err := os.Remove(filepath.Join(dir, objects, hash[:2], hash[2:])); err == nil {
			return
		}
	}
	t.Fatalf("no object %s under %s", hash, dir)
}

// copy --from reads the source: a ref evicted from the source is missing
// even when the local store (and the target) still hold it, and a source
// that names the ref but lost a blob is incomplete, not promoted.
func TestCopyFromReadsTheSource(t *testing.T) {
	latest := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	releases := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	fresh := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, latest)
	ref := bigRef(t, refs)
	big := largestObject(t, latest.Dir)
	// latest's index still names the ref while its CAS lost a blob, as
	// Buildbarn's independently evicting index and CAS do.
	lossy := testenv.StartProxy(t, latest.Addr, testenv.ProxyFaults{Hide: map[string]bool{big: true}})
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("latest", latest.URL(), false)+cacheTOML("lossy", "http://"+lossy, false)+
		cacheTOML("releases", releases.URL(), true)+cacheTOML("fresh", fresh.URL(), true))
	local := t.TempDir()
	if rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "copy", "--from", "latest", "--to", "releases", ref); code != 0 || statuses(rep) != "done@releases" {
		t.Fatalf("first copy: exit %d, %s\n%s", code, statuses(rep), stderr)
	}

	// The source lacks a blob of the artifact: not promoted, though
	// local has every blob.
	rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "copy", "--from", "lossy", "--to", "fresh", ref)
	if code != 1 || statuses(rep) != "failed@fresh" || !strings.Contains(rep.Refs[0].Reason, big) {
		t.Errorf("copy from a source lacking a blob: exit %d, %+v; want 1, failed naming %s\n%s", code, rep.Refs, big, stderr)
	}
	if got := testenv.RefsOnDisk(t, fresh.Dir); len(got) != 0 {
		t.Errorf("promoted from an incomplete source: %v", got)
	}

	// latest evicts the ref: missing, though local and releases hold it.
	if err := os.Remove(filepath.Join(latest.Dir, "cas", "refs", "heads", filepath.FromSlash(ref))); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"fresh", "releases"} {
		rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "copy", "--from", "latest", "--to", to, ref)
		if code != 3 || statuses(rep) != "missing@"+to {
			t.Errorf("copy --to %s of a ref evicted from the source: exit %d, %s; want 3, missing\n%s", to, code, statuses(rep), stderr)
		}
	}
	if got := testenv.RefsOnDisk(t, fresh.Dir); len(got) != 0 {
		t.Errorf("promoted from a source that no longer has it: %v", got)
	}
}

// Index and storage apart (an index like Buildbarn's bb_remote_asset,
// which checks no CAS): push writes storage before any index, and an index
// entry only once its blobs are confirmed on storage readers use; which
// confirms an index hit the same way; a copy from the index-only cache
// takes blobs from the storage cache, with --from repeated or from the
// configured storage.
func TestSplitIndexAndStorage(t *testing.T) {
	latest := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	index := testenv.StartAssetIndex(t, codes.NotFound)
	storage := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	releases := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, latest)
	local := t.TempDir()
	if _, stderr, code := runCLI(t, "", "--config", writeConfig(t, "format = \"bst1\"\n"+cacheTOML("latest", latest.URL(), false)), "--local", local, "pull", refs[0]); code != 0 {
		t.Fatalf("pull: %d\n%s", code, stderr)
	}
	typed := func(name, url, typ string) string {
		return strings.Replace(cacheTOML(name, url, true), "push = true\n", fmt.Sprintf("push = true\ntype = %q\n", typ), 1)
	}
	dead := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))

	// Storage down: the index is not written, alone or with it.
	cfg := writeConfig(t, "format = \"bst1\"\n"+typed("idx", index.URL(), "index")+typed("stor", dead, "storage"))
	rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "push", "--cache", "idx", "--cache", "stor", refs[0])
	if code != 1 || statuses(rep) != "failed@idx failed@stor" {
		t.Errorf("push with storage down: exit %d, %s; want both failed\n%s", code, statuses(rep), stderr)
	}
	rep, stderr, code = runJSON(t, "--config", cfg, "--local", local, "push", "--cache", "idx", refs[0])
	if code != 1 || statuses(rep) != "failed@idx" || !strings.Contains(rep.Refs[0].Reason, "index entry not written") {
		t.Errorf("push to the index alone, storage down: exit %d, %+v\n%s", code, rep.Refs, stderr)
	}
	// Storage up but without the blobs: the index alone is refused.
	cfg = writeConfig(t, "format = \"bst1\"\n"+typed("idx", index.URL(), "index")+typed("stor", storage.URL(), "storage")+cacheTOML("releases", releases.URL(), true))
	rep, stderr, code = runJSON(t, "--config", cfg, "--local", local, "push", "--cache", "idx", refs[0])
	if code != 1 || statuses(rep) != "failed@idx" || !strings.Contains(rep.Refs[0].Reason, "on no storage cache readers of idx use (stor, releases)") {
		t.Errorf("push to the index alone, blobs on no storage: exit %d, %+v\n%s", code, rep.Refs, stderr)
	}
	if index.Len() != 0 {
		t.Fatalf("an index entry was written with no storage behind it")
	}

	// Storage then index.
	rep, stderr, code = runJSON(t, "--config", cfg, "--local", local, "push", "--cache", "idx", "--cache", "stor", refs[0])
	if code != 0 || statuses(rep) != "done@idx done@stor" {
		t.Fatalf("push to index and storage: exit %d, %s\n%s", code, statuses(rep), stderr)
	}
	stdout, _, _ := runCLI(t, "", "--config", cfg, "--json", "which", refs[0])
	var locs []whichLoc
	if err := decodeDoc(stdout, &locs); err != nil || len(locs) != 1 || locs[0].Caches[0].Status != "present" {
		t.Errorf("which after the split push: %v %s", err, stdout)
	}

	for i, from := range [][]string{{"--from", "idx"}, {"--from", "idx", "--from", "stor"}} {
		args := append(append([]string{"--config", cfg, "--local", t.TempDir(), "copy"}, from...), "--to", "releases", refs[0])
		rep, stderr, code := runJSON(t, args...)
		want := []string{"done@releases", "skipped@releases"}[i]
		if code != 0 || statuses(rep) != want || rep.Refs[0].Cache != "idx" {
			t.Errorf("copy %v: exit %d, %+v; want %s from idx\n%s", from, code, rep.Refs, want, stderr)
		}
	}

	// The storage caches lose a blob: which calls the index hit
	// incomplete, not present.
	big := largestObject(t, storage.Dir)
	removeObject(t, storage.Dir, big)
	removeObject(t, releases.Dir, big)
	stdout, _, code = runCLI(t, "", "--config", cfg, "--json", "which", refs[0])
	if err := decodeDoc(stdout, &locs); err != nil || locs[0].Caches[0].Status != "incomplete" {
		t.Errorf("which of an index hit whose storage lost a blob: exit %d, %v %s", code, err, stdout)
	}
}

// A target whose index names the digest but lost blobs is repaired, not
// skipped; a target naming another digest is a conflict for push too,
// unless --force. releases stands for a Buildbarn frontend: Remote Asset
// calls go to an index that checks no CAS, the rest to serve's CAS, so
// index and CAS evict independently.
func TestPushRepairsAndDoesNotClobber(t *testing.T) {
	latest := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	releases := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	index := testenv.StartAssetIndex(t, codes.NotFound)
	frontend := testenv.StartProxy(t, releases.Addr, testenv.ProxyFaults{Route: map[string]string{"/build.bazel.remote.asset.v1.": index.Addr}})
	_, _, refs := builtProject(t, latest)
	ref := bigRef(t, refs)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("latest", latest.URL(), false)+cacheTOML("releases", "http://"+frontend, true))
	local := t.TempDir()
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "pull", ref); code != 0 {
		t.Fatalf("pull: %d\n%s", code, stderr)
	}
	if rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "push", ref); code != 0 || statuses(rep) != "done@releases" {
		t.Fatalf("push: exit %d, %s\n%s", code, statuses(rep), stderr)
	}
	big := largestObject(t, releases.Dir)
	removeObject(t, releases.Dir, big)
	rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "push", "--dry-run", ref)
	if code != 0 || statuses(rep) != "would-repair@releases" || rep.Counts["would-repair"] != 1 || rep.moved() != 0 {
		t.Errorf("push --dry-run to an incomplete target: exit %d, %s, %+v\n%s", code, statuses(rep), rep, stderr)
	}
	rep, stderr, code = runJSON(t, "--config", cfg, "--local", local, "push", ref)
	if code != 0 || statuses(rep) != "repaired@releases" || rep.Counts["repaired"] != 1 || rep.moved() != 1 {
		t.Errorf("push to an incomplete target: exit %d, %s, %+v; want repaired, 1 blob\n%s", code, statuses(rep), rep, stderr)
	}
	if largestObject(t, releases.Dir) != big {
		t.Error("the missing blob was not sent back")
	}
	rep, _, code = runJSON(t, "--config", cfg, "--local", local, "push", ref)
	if code != 0 || statuses(rep) != "skipped@releases" {
		t.Errorf("push to a complete target: exit %d, %s; want skipped", code, statuses(rep))
	}

	// Another digest under the same ref on the target: a conflict.
	theirs := digest.NewFromBlob([]byte("another build")).ToProto()
	index.Set(buildstream.URNBst1Artifact+ref, theirs)
	rep, stderr, code = runJSON(t, "--config", cfg, "--local", local, "push", ref)
	if code != 1 || statuses(rep) != "conflict@releases" {
		t.Errorf("push over another digest: exit %d, %s; want 1, conflict\n%s", code, statuses(rep), stderr)
	}
	if rep, _, _ := runJSON(t, "--config", cfg, "--local", local, "push", "--dry-run", ref); statuses(rep) != "conflict@releases" {
		t.Errorf("push --dry-run over another digest: %s; want conflict", statuses(rep))
	}
	if rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "push", "--force", ref); code != 0 || statuses(rep) != "done@releases" {
		t.Errorf("push --force: exit %d, %s\n%s", code, statuses(rep), stderr)
	}
}

// Dry runs say what would happen, with the blobs and bytes that would move
// after de-duplication, never counted as transferred; nothing changes.
func TestDryRuns(t *testing.T) {
	latest := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	releases := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, latest)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("latest", latest.URL(), false)+cacheTOML("releases", releases.URL(), true))
	local := filepath.Join(t.TempDir(), "store")

	rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "pull", "--dry-run", refs[0], "demo/none/0")
	if code != 3 || statuses(rep) != "would-pull missing" || rep.Refs[0].Blobs == 0 || rep.Refs[0].Bytes == 0 || rep.moved() != 0 {
		t.Errorf("pull --dry-run: exit %d, %s, %+v\n%s", code, statuses(rep), rep, stderr)
	}
	if _, err := os.Stat(local); err == nil {
		t.Errorf("pull --dry-run created the local store")
	}
	want := rep.Refs[0]

	rep, stderr, code = runJSON(t, "--config", cfg, "--local", local, "copy", "--dry-run", "--from", "latest", "--to", "releases", refs[0])
	if code != 0 || statuses(rep) != "would-copy@releases" || rep.Refs[0].Blobs != want.Blobs || rep.Refs[0].Bytes != want.Bytes || rep.moved() != 0 || rep.BlobsWould != want.Blobs {
		t.Errorf("copy --dry-run: exit %d, %+v; want would-copy of %d blobs, %d bytes\n%s", code, rep, want.Blobs, want.Bytes, stderr)
	}
	if got := testenv.RefsOnDisk(t, releases.Dir); len(got) != 0 {
		t.Errorf("copy --dry-run wrote refs: %v", got)
	}
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "copy", "--from", "latest", "--to", "releases", refs[0]); code != 0 {
		t.Fatalf("copy: %d\n%s", code, stderr)
	}
	rep, _, code = runJSON(t, "--config", cfg, "--local", local, "copy", "--dry-run", "--from", "latest", "--to", "releases", refs[0])
	if code != 0 || statuses(rep) != "skipped@releases" || rep.BlobsWould != 0 {
		t.Errorf("copy --dry-run of a promoted ref: exit %d, %+v", code, rep)
	}
	rep, _, code = runJSON(t, "--config", cfg, "--local", t.TempDir(), "pull", "--dry-run", refs[0])
	if code != 0 || statuses(rep) != "would-pull" {
		t.Errorf("pull --dry-run into a fresh store: exit %d, %+v", code, rep)
	}
}

// snapshotDir lists every path under dir with its size, to tell that a
// command wrote nothing.
func snapshotDir(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil {
			info, _ := d.Info()
			if info != nil {
				out[p] = info.Size()
			}
		}
		return nil
	})
	return out
}

// Read-only commands write nothing: ls, which and dry runs on a
// bst-artifact-server directory, with no format configured, leave it as it
// was (its refs decide the format), and serve then still serves it to
// bst 1.6. An explicit other format reads the same refs: every command
// reads both BuildStreams' refs in any store.
func TestReadOnlyCommandsWriteNothing(t *testing.T) {
	bas := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
	p, builder, refs := builtProject(t, bas)
	bas.Stop()
	before := snapshotDir(t, bas.Dir)
	cfg := writeConfig(t, cacheTOML("other", testenv.StartServe(t, testenv.ServeOptions{Push: true}).URL(), true))

	out, stderr, code := runCLI(t, "", "--local", bas.Dir, "ls")
	if code != 0 || strings.Count(out, "\n") != len(refs) {
		t.Errorf("ls on a bst-artifact-server directory: exit %d, %q; want its %d refs\n%s", code, out, len(refs), stderr)
	}
	for _, args := range [][]string{
		{"--config", cfg, "--local", bas.Dir, "which", refs[0]},
		{"--config", cfg, "--local", bas.Dir, "push", "--dry-run", refs[0]},
		{"--config", cfg, "--local", bas.Dir, "pull", "--dry-run", refs[0]},
		{"--config", cfg, "--local", bas.Dir, "copy", "--dry-run", "--to", "other", refs[0]},
		{"--config", cfg, "--local", bas.Dir, "caches", "--offline"},
		{"--config", cfg, "--local", bas.Dir, "config"},
	} {
		runCLI(t, "", args...)
	}
	if diff := cmp.Diff(before, snapshotDir(t, bas.Dir)); diff != "" {
		t.Errorf("read-only commands changed the directory (-before +after):\n%s", diff)
	}
	if out, stderr, code := runCLI(t, "", "--format", "bst2", "--local", bas.Dir, "ls"); code != 0 || strings.Count(out, "\n") != len(refs) {
		t.Errorf("--format bst2 ls on a bst1 store: exit %d, %q; want its %d refs\n%s", code, out, len(refs), stderr)
	}

	srv := testenv.StartServe(t, testenv.ServeOptions{Dir: bas.Dir})
	fresh := testenv.NewBst(t)
	fresh.UseCaches(t, testenv.BstRemote{URL: srv.URL()})
	fresh.Run(t, p.Dir, "pull", p.Elements[0])
	if diff := cmp.Diff(testenv.TreeSnapshot(t, builder.Checkout(t, p, p.Elements[0])), testenv.TreeSnapshot(t, fresh.Checkout(t, p, p.Elements[0]))); diff != "" {
		t.Errorf("bst 1.6 through serve after the read-only commands (-built +pulled):\n%s", diff)
	}
}

// Buildbarn's bb_remote_asset without an "error" fetcher answers a URI it
// does not hold with PERMISSION_DENIED (or UNIMPLEMENTED) after the probe
// showed the service: a miss with one warning per cache naming the fix,
// not a failure. The index stands for bb_remote_asset, the routing proxy
// for the Buildbarn frontend in front of it and a CAS.
func TestRefusedAssetFetchIsAMiss(t *testing.T) {
	good := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, good)
	for _, code := range []codes.Code{codes.PermissionDenied, codes.Unimplemented} {
		t.Run(code.String(), func(t *testing.T) {
			index := testenv.StartAssetIndex(t, code)
			cas := testenv.StartServe(t, testenv.ServeOptions{Push: true})
			bb := testenv.StartProxy(t, cas.Addr, testenv.ProxyFaults{Route: map[string]string{"/build.bazel.remote.asset.v1.": index.Addr}})
			cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("bb", "http://"+bb, false)+cacheTOML("good", good.URL(), false))
			rep, stderr, code := runJSON(t, append([]string{"--config", cfg, "--local", t.TempDir(), "pull"}, refs...)...)
			if code != 0 || rep.Counts["done"] != len(refs) {
				t.Errorf("pull through a refusing index: exit %d, %+v\n%s", code, rep.Refs, stderr)
			}
			if n := strings.Count(stderr, `"error" fetcher`); n != 1 {
				t.Errorf("want one warning naming the server-side fix, got %d:\n%s", n, stderr)
			}
			cfg = writeConfig(t, "format = \"bst1\"\n"+cacheTOML("bb", "http://"+bb, false))
			rep, stderr, code = runJSON(t, "--config", cfg, "--local", t.TempDir(), "pull", refs[0])
			if code != 3 || statuses(rep) != "missing" {
				t.Errorf("pull from the refusing index alone: exit %d, %s; want 3, missing\n%s", code, statuses(rep), stderr)
			}
		})
	}
}

// A wrong format is not a silent miss: bst2 lookups on a cache that holds
// the ref as a BuildStream 1 artifact say how to set the format.
func TestWrongFormatSaysSo(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, srv)
	cfg := writeConfig(t, "format = \"bst2\"\n"+cacheTOML("serve", srv.URL(), false))
	rep, stderr, code := runJSON(t, "--config", cfg, "--local", t.TempDir(), "pull", refs[0])
	if code != 3 || statuses(rep) != "missing" || !strings.Contains(rep.Refs[0].Reason, "--format bst1") {
		t.Errorf("bst2 pull of a bst1 ref: exit %d, %+v; want missing with a hint to use --format bst1\n%s", code, rep.Refs, stderr)
	}
}

// bst1Artifact writes a BuildStream 1 artifact of distinct files into a
// store (bst1 when new): n small files of size bytes and one large file.
func bst1Artifact(t *testing.T, dir, ref string, n, size, large int) {
	t.Helper()
	bst1ArtifactSeeded(t, dir, ref, n, size, large, 1)
}

// bst1ArtifactSeeded is bst1Artifact with content from seed.
func bst1ArtifactSeeded(t *testing.T, dir, ref string, n, size, large int, seed uint64) {
	t.Helper()
	s, err := cache.Open(dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 2))
	blob := func(size int) *repb.Digest {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		d, err := s.Add(data)
		if err != nil {
			t.Fatal(err)
		}
		return d.ToProto()
	}
	files := &repb.Directory{}
	for i := 0; i < n; i++ {
		files.Files = append(files.Files, &repb.FileNode{Name: fmt.Sprintf("f%03d", i), Digest: blob(size)})
	}
	files.Files = append(files.Files, &repb.FileNode{Name: "large", Digest: blob(large)})
	data, _ := proto.Marshal(files)
	fd, err := s.Add(data)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := proto.Marshal(&repb.Directory{Directories: []*repb.DirectoryNode{{Name: "files", Digest: fd.ToProto()}}})
	rd, err := s.Add(root)
	if err != nil {
		t.Fatal(err)
	}
	ptr, _ := proto.Marshal(rd.ToProto())
	if err := s.SetRef(cache.KindBst1Artifact, ref, ptr); err != nil {
		t.Fatal(err)
	}
}

// A server with a receive limit it does not advertise (Buildbarn's
// maximumReceivedMessageSizeBytes; here the fault proxy at 512 KiB in front
// of serve) refuses big batches and ByteStream chunks with
// RESOURCE_EXHAUSTED: that is not retried as transient, the batch and the
// chunk are halved and remembered for the cache, and the push succeeds.
func TestMessageLimitShrinks(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	limited := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{MaxRecvMsgSize: 512 << 10})
	local := t.TempDir()
	bst1Artifact(t, local, "proj/big/key", 60, 60<<10, 3<<20)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("limited", "http://"+limited, true)+cacheTOML("direct", srv.URL(), false))
	rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "push", "--cache", "limited", "proj/big/key")
	if code != 0 || statuses(rep) != "done@limited" {
		t.Fatalf("push through a 512 KiB receive limit: exit %d, %+v\n%s", code, rep.Refs, stderr)
	}
	batch, chunk := strings.Count(stderr, ": batch size now"), strings.Count(stderr, ": chunk size now")
	if batch == 0 || chunk == 0 || batch+chunk > 8 {
		t.Errorf("want the batch and the chunk halved a few times and remembered, got %d and %d warnings:\n%s", batch, chunk, stderr)
	}
	// Everything arrived: a pull from serve directly is complete.
	cfg = writeConfig(t, "format = \"bst1\"\n"+cacheTOML("direct", srv.URL(), false))
	if rep, stderr, code := runJSON(t, "--config", cfg, "--local", t.TempDir(), "pull", "proj/big/key"); code != 0 || statuses(rep) != "done" {
		t.Errorf("pull back: exit %d, %+v\n%s", code, rep.Refs, stderr)
	}
}

// -v logs every retry with the cache, the call and the code.
func TestVerboseLogsRetries(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, srv)
	flaky := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{UnavailableFetches: 1})
	cfg := writeConfig(t, "format = \"bst1\"\n"+strings.Replace(cacheTOML("flaky", "http://"+flaky, false), "retry-limit = 1", "retry-limit = 2\nretry-delay = \"10ms\"", 1))
	_, stderr, code := runCLI(t, "", "--config", cfg, "--local", t.TempDir(), "-v", "pull", refs[0])
	if code != 0 || !strings.Contains(stderr, "cache flaky: FetchDirectory urn:fdc:buildstream.build:2020:v1:"+refs[0]+": Unavailable; retry 1") {
		t.Errorf("pull -v through a cache that fails once: exit %d; want the retry logged\n%s", code, stderr)
	}
}

// Hostile input: a password in a URL never reaches output, refs with
// control characters are refused and printed escaped (client and serve),
// and an over-long input line is a usage error naming it.
func TestHostileInput(t *testing.T) {
	cfg := writeConfig(t, "[[cache]]\nname = \"a\"\nurl = \"https://alice:s3cret-pass@cache.example.com\"\n")
	_, stderr, code := runCLI(t, "", "--config", cfg, "caches", "--offline")
	if code != 2 || strings.Contains(stderr, "s3cret-pass") || !strings.Contains(stderr, "***@cache.example.com") {
		t.Errorf("a URL with a password: exit %d; want 2 with the password hidden\n%s", code, stderr)
	}
	bstConf := writeFile(t, "buildstream.conf", "artifacts:\n  url: https://bob:hunter2@cache.example.com\n")
	if _, stderr, code := runCLI(t, "", "--config", bstConf, "caches", "--offline"); code != 2 || strings.Contains(stderr, "hunter2") {
		t.Errorf("a BuildStream URL with a password: exit %d\n%s", code, stderr)
	}

	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	cfg = writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), false))
	for _, bad := range []string{"demo/a\x1b[31mred/k", "demo/line\nbreak/k"} {
		_, stderr, code := runCLI(t, "", "--config", cfg, "--local", t.TempDir(), "pull", bad)
		if code != 2 || strings.ContainsAny(stderr, "\x1b") || strings.Count(stderr, "\n") > 2 {
			t.Errorf("pull %q: exit %d; want 2 with the ref escaped\n%q", bad, code, stderr)
		}
	}
	long := strings.Repeat("x", 2<<20) + "\n"
	stdin := writeFile(t, "refs", long)
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", t.TempDir(), "pull", "--refs-from", stdin); code != 2 || !strings.Contains(stderr, stdin+":1: line longer than 1 MiB") {
		t.Errorf("a 2 MB line: exit %d\n%.300s", code, stderr)
	}

	// serve refuses such a key and logs it escaped, on one line.
	r, err := remotes.Dial(context.Background(), config.Cache{Name: "serve", URL: srv.URL(), Type: config.TypeAll, MaxConcurrency: 2,
		Endpoint:   config.Endpoint{Target: srv.Addr},
		Connection: config.Connection{ConnectTimeout: 5 * time.Second, RequestTimeout: 30 * time.Second, RetryDelay: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	err = r.UpdateReference(context.Background(), []string{"demo/evil\n2026-01-01 forged log line/k"}, digest.Empty)
	var re *remotes.Error
	if !errors.As(err, &re) || re.Code != codes.InvalidArgument {
		t.Errorf("UpdateReference with a newline in the key: %v; want INVALID_ARGUMENT", err)
	}
	time.Sleep(100 * time.Millisecond)
	if strings.Contains(srv.Log(), "\n2026-01-01 forged log line") {
		t.Errorf("serve logged a client's newline raw:\n%s", srv.Log())
	}
}
