package commands_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// readmeBlocks returns the README's fenced blocks of one language, in
// order.
func readmeBlocks(t *testing.T, lang string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?ms)^```" + lang + "\n(.*?)^```")
	var blocks []string
	for _, m := range re.FindAllStringSubmatch(string(data), -1) {
		blocks = append(blocks, m[1])
	}
	return blocks
}

// authFileRE matches the README's file settings, which must name files
// that exist.
var authFileRE = regexp.MustCompile(`(?m)^(server-cert|client-cert|client-key|access-token) = "([^"]*)"`)

// withAuthFiles points the file settings of a README configuration at
// files made for the test (a token; a certificate file for the others),
// and drops certificate settings from caches when plaintext is wanted.
func withAuthFiles(t *testing.T, cfg string, keepCerts bool) string {
	t.Helper()
	dir := t.TempDir()
	return authFileRE.ReplaceAllStringFunc(cfg, func(line string) string {
		m := authFileRE.FindStringSubmatch(line)
		if m[1] != "access-token" && !keepCerts {
			return ""
		}
		p := filepath.Join(dir, filepath.Base(m[2]))
		if err := os.WriteFile(p, []byte("readme-test-token\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return m[1] + " = " + `"` + p + `"`
	})
}

// Every configuration the README shows is one bst-cache accepts: a user
// copying one gets no "unknown key".
func TestReadmeConfigurationsLoad(t *testing.T) {
	blocks := readmeBlocks(t, "toml")
	if len(blocks) < 3 {
		t.Fatalf("the README shows %d TOML blocks; want the reference, the mirror's and the cluster's", len(blocks))
	}
	for i, block := range blocks {
		cfg := writeConfig(t, withAuthFiles(t, block, true))
		if stdout, stderr, code := runCLI(t, "", "--config", cfg, "config"); code != 0 {
			t.Errorf("README TOML block %d: config exits %d\n%s%s\n%s", i+1, code, stdout, stderr, block)
		}
	}
}

// The README's "cluster behind serve" example, as printed: its
// configuration and its serve command, with the cluster's addresses
// pointed at stand-ins. bazel-remote stands for Buildbarn's bb_storage
// frontend (a CAS with zstd); testenv.AssetIndex for bb_remote_asset,
// keeping entries apart from the CAS and answering unknown URIs
// PERMISSION_DENIED as bb_remote_asset does without an "error" fetcher.
// A BuildStream 2 artifact pushed to the cluster is pulled through the
// edge byte for byte as directly; one the index names but the CAS has
// dropped is a miss at the edge, which stores no ref for it.
func TestReadmeClusterExample(t *testing.T) {
	var cfg, cmd string
	for _, b := range readmeBlocks(t, "toml") {
		if strings.Contains(b, "edge.toml") {
			cfg = b
		}
	}
	for _, b := range readmeBlocks(t, "sh") {
		if strings.Contains(b, "edge.toml") && strings.Contains(b, " serve ") {
			cmd = b
		}
	}
	if cfg == "" || cmd == "" {
		t.Fatal("the README's cluster example (edge.toml and its serve command) is gone")
	}
	bazel := testenv.StartBazelRemote(t)
	index := testenv.StartAssetIndex(t, codes.PermissionDenied)
	urls := regexp.MustCompile(`grpcs://[a-z.]+:[0-9]+`).FindAllString(cfg, -1)
	if len(urls) != 2 {
		t.Fatalf("the cluster example names %d URLs; want the index's and the CAS's: %v", len(urls), urls)
	}
	cfg = strings.Replace(cfg, urls[0], index.URL(), 1)
	cfg = strings.Replace(cfg, urls[1], "grpc://"+bazel.Addr, 1)
	cfg = withAuthFiles(t, cfg, false) // the stand-ins speak plaintext
	cfg = "format = \"bst2\"\n" + cfg

	// CI's push to the cluster, as the README says: both with push = true.
	origin := t.TempDir()
	bst2Store(t, origin)
	s, err := cache.Open(origin, cache.KindBst2Artifact)
	if err != nil {
		t.Fatal(err)
	}
	gone := bst2Artifact(t, s, "proj", "gone", "g1", "g1w")
	pushCfg := writeConfig(t, strings.ReplaceAll(cfg, "type = ", "push = true\ntype = "))
	if _, stderr, code := runCLI(t, "", "--config", pushCfg, "--local", origin, "push", "--cache", "cluster-index", "--cache", "cluster-cas", "proj/elem/key1"); code != 0 {
		t.Fatalf("push to the cluster: exit %d\n%s", code, stderr)
	}
	// An entry whose blobs the CAS has dropped: the index names gone, the
	// CAS never held what only gone needs (pushed to a throwaway CAS).
	elsewhere := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	goneCfg := writeConfig(t, strings.Replace(strings.ReplaceAll(cfg, "type = ", "push = true\ntype = "), "grpc://"+bazel.Addr, elsewhere.URL(), 1))
	if _, stderr, code := runCLI(t, "", "--config", goneCfg, "--local", origin, "push", "--cache", "cluster-index", "--cache", "cluster-cas", gone); code != 0 {
		t.Fatalf("push of %s: exit %d\n%s", gone, code, stderr)
	}

	var args []string
	fields := strings.Fields(strings.ReplaceAll(cmd, "\\\n", " "))
	for i := 0; i < len(fields); i++ {
		switch fields[i] {
		case "--upstream", "--quota":
			args = append(args, fields[i], fields[i+1])
			i++
		}
	}
	if strings.Count(strings.Join(args, " "), "--upstream") != 2 {
		t.Fatalf("the README's serve command names no two upstreams: %q", cmd)
	}
	edge := testenv.StartServe(t, testenv.ServeOptions{Env: []string{"BST_CACHE_CONFIG=" + writeConfig(t, cfg)}, Args: args})

	direct, mirrored := t.TempDir(), t.TempDir()
	pullDone(t, writeConfig(t, cfg), direct, "proj/elem/key1")
	pullDone(t, writeConfig(t, "format = \"bst2\"\n"+cacheTOML("edge", edge.URL(), false)), mirrored, "proj/elem/key1")
	if diff := cmp.Diff(storeSnapshot(t, direct), storeSnapshot(t, mirrored)); diff != "" {
		t.Errorf("direct pull from the cluster against pull through the edge (-direct +edge):\n%s", diff)
	}
	pullMissing(t, writeConfig(t, "format = \"bst2\"\n"+cacheTOML("edge", edge.URL(), false)), gone)
	es, err := cache.Open(edge.Dir, cache.KindBst2Artifact)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := es.ListRefs(cache.KindBst2Artifact, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, info := range infos {
		got = append(got, info.Name)
	}
	if !cmp.Equal(got, []string{"proj/elem/key1"}) {
		t.Errorf("the edge holds refs %v; want only proj/elem/key1 (the index names %s, whose blobs the CAS dropped)", got, gone)
	}
	if stdout, stderr, code := runCLI(t, "", "--format", "bst2", "--local", edge.Dir, "verify"); code != 0 {
		t.Errorf("verify of the edge's store: exit %d\n%s%s", code, stdout, stderr)
	}
}
