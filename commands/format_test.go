package commands_test

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// The README's migration recipe, with no format set anywhere (no
// --format, no format key, no project, no local store yet): bst 1.6 has
// pushed to a bst-artifact-server; its directory is listed, then copied to
// a serve. Each ref is looked up as both formats, found as bst1, copied:
// every ref done, exit 0, and the target holds them all.
func TestMigrationRecipeWithNoFormat(t *testing.T) {
	old := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
	target := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, old)
	cfg := writeConfig(t, cacheTOML("old", old.URL(), false)+cacheTOML("new", target.URL(), true))

	listed, stderr, code := runCLI(t, "", "--config", cfg, "--local", old.Dir, "ls")
	if code != 0 {
		t.Fatalf("ls: exit %d\n%s", code, stderr)
	}
	if diff := cmp.Diff(refs, strings.Fields(listed)); diff != "" {
		t.Fatalf("ls of the server's directory (-pushed +listed):\n%s", diff)
	}
	refsFile := writeFile(t, "refs.txt", listed)
	stdout, stderr, code := runCLI(t, "", "--config", cfg, "copy", "--from", "old", "--to", "new", "--refs-from", refsFile)
	if code != 0 {
		t.Fatalf("copy: exit %d; want 0\n%s%s", code, stdout, stderr)
	}
	done := 0
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		if strings.HasPrefix(line, "done ") {
			done++
		}
	}
	if done != len(refs) {
		t.Errorf("%d of %d refs done:\n%s", done, len(refs), stdout)
	}
	if diff := cmp.Diff(refs, testenv.RefsOnDisk(t, target.Dir)); diff != "" {
		t.Errorf("refs on the target (-source +target):\n%s", diff)
	}
	// which says what each cache holds the ref as: no format was set.
	table, stderr, code := runCLI(t, "", "--config", cfg, "which", refs[0])
	if code != 0 || strings.Count(table, "yes (bst1)") != 2 {
		t.Errorf("which: exit %d; want both caches to say yes (bst1)\n%s%s", code, table, stderr)
	}
	js, stderr, code := runCLI(t, "", "--config", cfg, "--json", "which", refs[0])
	if code != 0 || strings.Count(js, `"kind":"bst1-artifact"`)+strings.Count(js, `"kind": "bst1-artifact"`) != 2 {
		t.Errorf("which --json: exit %d; want the kind of both caches' hits\n%s%s", code, js, stderr)
	}
}

// A run that finds nothing, or fails, creates no local store: no
// directory appears under --local (the next run is not tied to a layout
// nobody chose).
func TestNoStoreWithoutWrites(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	dead := testenv.StartServe(t, testenv.ServeOptions{})
	deadURL := dead.URL()
	dead.Stop()
	cfg := writeConfig(t, cacheTOML("live", srv.URL(), true))
	deadCfg := writeConfig(t, cacheTOML("dead", deadURL, true)+cacheTOML("live", srv.URL(), true))
	twoCfg := writeConfig(t, cacheTOML("live", srv.URL(), true)+cacheTOML("other", testenv.StartServe(t, testenv.ServeOptions{Push: true}).URL(), true))
	for _, tc := range []struct {
		name string
		code int
		args []string
	}{
		{"pull of a ref no cache has", 3, []string{"--config", cfg, "pull", "demo/none/0123"}},
		{"copy of a ref no source has", 3, []string{"--config", twoCfg, "copy", "--from", "live", "--to", "other", "demo/none/0123"}},
		{"copy to a target that is down", 1, []string{"--config", deadCfg, "copy", "--from", "live", "--to", "dead", "demo/none/0123"}},
		{"pull from a cache that is down", 1, []string{"--config", writeConfig(t, cacheTOML("dead", deadURL, false)), "pull", "demo/none/0123"}},
		{"push of a ref not in the store", 3, []string{"--config", cfg, "push", "demo/none/0123"}},
		{"gc of no store", 0, []string{"--config", cfg, "gc"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			local := filepath.Join(t.TempDir(), "store")
			_, stderr, code := runCLI(t, "", append([]string{"--local", local}, tc.args...)...)
			if code != tc.code {
				t.Errorf("exit %d; want %d\n%s", code, tc.code, stderr)
			}
			if _, err := os.Stat(local); !os.IsNotExist(err) {
				t.Errorf("the run left %s behind (%v): %v", local, err, treeOf(t, local))
			}
		})
	}
}

// treeOf lists what is under dir.
func treeOf(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		if err == nil {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// A new serve directory with no format set takes the layout of the first
// artifact written: bst 1.6 pushes, so bst-artifact-server's; that server
// then serves the directory, and a fresh bst 1.6 pulls from it files
// identical to what was built.
func TestServeNewDirTakesBst1Layout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true, Dir: dir})
	p, builder, refs := builtProject(t, srv)
	srv.Stop()
	if layout, _ := cache.DetectLayout(dir); layout != cache.KindBst1Artifact {
		t.Log(srv.Log())
		t.Fatalf("serve wrote bst 1.6's push in the %q layout: %v", layout, treeOf(t, dir))
	}
	if diff := cmp.Diff(refs, testenv.RefsOnDisk(t, dir)); diff != "" {
		t.Errorf("refs in the directory (-pushed +stored):\n%s", diff)
	}
	back := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Dir: dir})
	fresh := testenv.NewBst(t)
	fresh.UseCaches(t, testenv.BstRemote{URL: back.URL()})
	fresh.Run(t, p.Dir, append([]string{"pull"}, p.Elements...)...)
	for _, el := range p.Elements {
		want := testenv.TreeSnapshot(t, builder.Checkout(t, p, el))
		if diff := cmp.Diff(want, testenv.TreeSnapshot(t, fresh.Checkout(t, p, el))); diff != "" {
			t.Errorf("%s from bst-artifact-server (-built +pulled):\n%s", el, diff)
		}
	}
	// bst-cache reads it from there too, with no format set.
	cfg := writeConfig(t, cacheTOML("back", back.URL(), false))
	local := filepath.Join(t.TempDir(), "store")
	if stdout, stderr, code := runCLI(t, "", append([]string{"--config", cfg, "--local", local, "pull"}, refs...)...); code != 0 {
		t.Fatalf("pull from bst-artifact-server: exit %d\n%s%s", code, stdout, stderr)
	}
	if diff := cmp.Diff(refs, testenv.RefsOnDisk(t, local)); diff != "" {
		t.Errorf("pulled refs (-pushed +local):\n%s", diff)
	}
}

// pullSameFiles has a fresh bst 1.6 pull the project's elements from url
// and checks them out: the files must be those builder built.
func pullSameFiles(t *testing.T, p *testenv.Project, builder *testenv.Bst, url string) {
	t.Helper()
	fresh := testenv.NewBst(t)
	fresh.UseCaches(t, testenv.BstRemote{URL: url})
	fresh.Run(t, p.Dir, append([]string{"pull"}, p.Elements...)...)
	for _, el := range p.Elements {
		want := testenv.TreeSnapshot(t, builder.Checkout(t, p, el))
		if diff := cmp.Diff(want, testenv.TreeSnapshot(t, fresh.Checkout(t, p, el))); diff != "" {
			t.Errorf("%s pulled from %s (-built +pulled):\n%s", el, url, diff)
		}
	}
}

// One directory holding BuildStream 1 refs (cas/refs/heads) and
// BuildStream 2 artifacts (artifacts/refs), as serve kept them: ls lists
// both, du measures both, gc keeps both and removes only what neither
// reaches, whatever the store's layout and the format.
func TestLocalCommandsReadMixedRefs(t *testing.T) {
	for _, layout := range []cache.Kind{cache.KindBst1Artifact, cache.KindBst2Artifact} {
		t.Run(layout.Format(), func(t *testing.T) {
			dir := t.TempDir()
			s, err := cache.Open(dir, layout)
			if err != nil {
				t.Fatal(err)
			}
			v2 := bst2Artifact(t, s, "proj", "new", "n1", "n1") // makes the store, in its layout
			v1 := "demo/old/1111"
			bst1Artifact(t, dir, v1, 3, 100, 1000)
			stray, err := s.Add([]byte("reached by no ref"))
			if err != nil {
				t.Fatal(err)
			}
			want := []string{v1, v2}
			sort.Strings(want)
			for _, format := range []string{"", "bst1", "bst2"} {
				args := []string{"--local", dir}
				if format != "" {
					args = append(args, "--format", format)
				}
				stdout, stderr, code := runCLI(t, "", append(args, "ls")...)
				if diff := cmp.Diff(want, strings.Fields(stdout)); code != 0 || diff != "" {
					t.Errorf("ls (format %q): exit %d (-want +got):\n%s%s", format, code, diff, stderr)
				}
				stdout, stderr, code = runCLI(t, "", append(args, "du")...)
				if code != 0 || !strings.Contains(stdout, v1) || !strings.Contains(stdout, v2) || strings.Contains(stdout, "not found") {
					t.Errorf("du (format %q): exit %d\n%s%s", format, code, stdout, stderr)
				}
			}
			_, stderr, code := runCLI(t, "", "--local", dir, "gc", "--grace", "0s")
			if code != 0 {
				t.Fatalf("gc: exit %d\n%s", code, stderr)
			}
			if ok, _ := s.Has(stray); ok {
				t.Errorf("gc kept an object no ref reaches\n%s", stderr)
			}
			stdout, stderr, code := runCLI(t, "", "--local", dir, "verify")
			if code != 0 {
				t.Errorf("verify after gc: exit %d: gc removed what a ref reaches\n%s%s", code, stdout, stderr)
			}
			stdout, _, _ = runCLI(t, "", "--local", dir, "ls")
			if diff := cmp.Diff(want, strings.Fields(stdout)); diff != "" {
				t.Errorf("ls after gc (-want +got):\n%s", diff)
			}
		})
	}
}

// With no format set, a cache that cannot answer one format's lookup
// (UNAVAILABLE for BuildStream 1's FetchDirectory) and misses the other
// was not asked: pull says failed (exit 1) and which ERR, never missing.
func TestNoFormatHalfAnswerIsNotAMiss(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	flaky := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{UnavailableFetches: 1000})
	cfg := writeConfig(t, cacheTOML("flaky", "http://"+flaky, false))
	const ref = "demo/absent/0123"
	rep, stderr, code := runJSON(t, "--config", cfg, "--local", filepath.Join(t.TempDir(), "new"), "pull", ref)
	if code != 1 || statuses(rep) != "failed" {
		t.Errorf("pull: exit %d, %s; want 1, failed\n%s", code, statuses(rep), stderr)
	}
	table, stderr, code := runCLI(t, "", "--config", cfg, "--local", filepath.Join(t.TempDir(), "new"), "which", ref)
	if code != 1 || !strings.Contains(table, "ERR") {
		t.Errorf("which: exit %d; want 1 and ERR\n%s%s", code, table, stderr)
	}
}

// A local store that holds only BuildStream 1 refs (what a migration
// through it leaves) does not set the format for later runs: with no
// format set, a ref a cache holds as a BuildStream 2 artifact is found
// and pulled, not reported missing after a lookup as bst1 alone.
func TestStoreRefsDoNotSetTheFormat(t *testing.T) {
	old := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
	target := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, old)
	cfg := writeConfig(t, cacheTOML("old", old.URL(), false)+cacheTOML("new", target.URL(), true))
	stage := t.TempDir()
	refsFile := writeFile(t, "refs.txt", strings.Join(refs, "\n")+"\n")
	if stdout, stderr, code := runCLI(t, "", "--config", cfg, "--local", stage, "copy", "--from", "old", "--to", "new", "--refs-from", refsFile); code != 0 {
		t.Fatalf("copy: exit %d\n%s%s", code, stdout, stderr)
	}

	// A BuildStream 2 artifact reaches the target from another store.
	other, err := cache.Open(t.TempDir(), cache.KindBst2Artifact)
	if err != nil {
		t.Fatal(err)
	}
	v2 := bst2Artifact(t, other, "proj", "app", "a2a2", "w2w2")
	if stdout, stderr, code := runCLI(t, "", "--config", cfg, "--local", other.Root(), "push", "--cache", "new", v2); code != 0 {
		t.Fatalf("push of the bst2 artifact: exit %d\n%s%s", code, stdout, stderr)
	}

	stdout, stderr, code := runCLI(t, "", "--config", cfg, "--local", stage, "pull", v2)
	if code != 0 || !strings.HasPrefix(stdout, "done ") {
		t.Errorf("pull into a store of bst1 refs: exit %d; want done\n%s%s", code, stdout, stderr)
	}
}
