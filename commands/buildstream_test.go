package commands_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// runAs runs bst-cache in-process in dir with a bst's environment (its
// XDG directories, so its BuildStream configuration and cache) and no
// bst-cache configuration but what dir holds.
func runAs(t *testing.T, b *testenv.Bst, dir string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runWith(t, dir, b.Env(), args...)
}

// builtDepsProject writes the deps project recommending srv in its
// project.conf, builds apps/app.bst with bst 1.6 and pushes its closure.
func builtDepsProject(t *testing.T, srv *testenv.Server) (*testenv.Project, *testenv.Bst) {
	t.Helper()
	p := testenv.WriteDepsProject(t, "artifacts:\n  url: "+srv.URL()+"\n")
	builder := testenv.NewBst(t)
	builder.UseCaches(t, testenv.BstRemote{URL: srv.URL(), Push: true})
	builder.Run(t, p.Dir, "build", "apps/app.bst")
	builder.Run(t, p.Dir, "push", "--deps", "all", "apps/app.bst")
	return p, builder
}

// states is what `bst show` says of every element of app's closure,
// strict or not.
func states(t *testing.T, b *testenv.Bst, p *testenv.Project, strict bool) string {
	t.Helper()
	args := []string{"show", "--deps", "all", "--format", "%{name}=%{state}", "apps/app.bst"}
	if !strict {
		args = append([]string{"--no-strict"}, args...)
	}
	return strings.TrimSpace(b.Output(t, p.Dir, args...))
}

// assertNothingToBuild checks that bst, strict and not, finds every
// element cached and builds nothing.
func assertNothingToBuild(t *testing.T, b *testenv.Bst, p *testenv.Project) {
	t.Helper()
	const want = "base.bst=cached\nlib.bst=cached\nsub.bst:libsub.bst=cached\napps/app.bst=cached"
	for _, strict := range []bool{true, false} {
		if got := states(t, b, p, strict); got != want {
			t.Errorf("bst show (strict=%t):\n%s\nwant every element cached", strict, got)
		}
		args := []string{"build", "apps/app.bst"}
		if !strict {
			args = append([]string{"--no-strict"}, args...)
		}
		if out := b.Run(t, p.Dir, args...); strings.Contains(out, "[build:") {
			t.Errorf("bst %v built something:\n%s", args, out)
		}
	}
}

// In a BuildStream 1.6 project with a junction and dependencies, with the
// caches only in BuildStream's own configuration ([a dead cache from
// buildstream.conf's projects section, bst-artifact-server from
// project.conf]) and no bst-cache file: `bst-cache pull --deps all
// apps/app.bst` fills BuildStream's own cache with every artifact under
// its strong and weak refs, so bst builds nothing, strict or not, and
// checks out the same files.
func TestPullElementsIntoBuildStream(t *testing.T) {
	bas := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
	p, builder := builtDepsProject(t, bas)
	wantRefs := testenv.RefsOnDisk(t, builder.ArtifactDir())
	if len(wantRefs) != 6 { // app and lib twice (strong and weak), base and libsub once
		t.Fatalf("bst stored %d refs, want 6: %v", len(wantRefs), wantRefs)
	}

	fresh := testenv.NewBst(t)
	dead := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
	fresh.WriteUserConfig(t, "projects:\n  demo:\n    artifacts:\n    - url: "+dead+"\n")

	stdout, stderr, code := runAs(t, fresh, p.Dir, "caches", "--offline")
	if code != 0 || !strings.Contains(stdout, dead) || !strings.Contains(stdout, bas.URL()) || strings.Index(stdout, dead) > strings.Index(stdout, bas.URL()) {
		t.Errorf("caches from BuildStream's configuration: exit %d\n%s\n%s", code, stdout, stderr)
	}
	_, stderr, code = runAs(t, fresh, p.Dir, "pull", "--deps", "all", "apps/app.bst")
	if code != 0 {
		t.Fatalf("pull --deps all apps/app.bst: exit %d\n%s", code, stderr)
	}
	if n := strings.Count(stderr, dead); n != 1 {
		t.Errorf("want one warning naming the dead cache, got %d:\n%s", n, stderr)
	}
	if diff := cmp.Diff(wantRefs, testenv.RefsOnDisk(t, fresh.ArtifactDir())); diff != "" {
		t.Errorf("refs in BuildStream's cache after bst-cache pull (-bst's +bst-cache's):\n%s", diff)
	}

	bas.Stop() // bst must find everything locally
	assertNothingToBuild(t, fresh, p)
	want := testenv.TreeSnapshot(t, builder.Checkout(t, p, "apps/app.bst"))
	if diff := cmp.Diff(want, testenv.TreeSnapshot(t, fresh.Checkout(t, p, "apps/app.bst"))); diff != "" {
		t.Errorf("checkout after bst-cache pull (-built +pulled):\n%s", diff)
	}

	// Element errors are usage errors naming the element.
	if _, stderr, code := runAs(t, fresh, p.Dir, "pull", "nosuch.bst"); code != 2 || !strings.Contains(stderr, "nosuch.bst") {
		t.Errorf("pull of an unknown element: exit %d\n%s", code, stderr)
	}
	if _, stderr, code := runAs(t, fresh, t.TempDir(), "pull", "apps/app.bst"); code != 2 || !strings.Contains(stderr, "--project") {
		t.Errorf("pull of an element outside a project: exit %d\n%s", code, stderr)
	}
	// Sources without a reference (never tracked): bst cannot give a key.
	if err := os.WriteFile(filepath.Join(p.Dir, "elements", "untracked.bst"), []byte("kind: import\nsources:\n- kind: tar\n  url: file:///nonexistent/x.tar\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runAs(t, fresh, p.Dir, "pull", "untracked.bst"); code != 2 || !strings.Contains(stderr, "untracked.bst") || !strings.Contains(stderr, "no reference") {
		t.Errorf("pull of an element with untracked sources: exit %d\n%s", code, stderr)
	}
	t.Run("no bst", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		if _, stderr, code := runAs(t, fresh, p.Dir, "pull", "apps/app.bst"); code != 2 || !strings.Contains(stderr, "apps/app.bst") || !strings.Contains(stderr, "bst") {
			t.Errorf("pull of an element without bst: exit %d\n%s", code, stderr)
		}
	})
}

// A ref given by its weak key resolves like bst's non-strict lookup: the
// artifact comes, and is stored under its strong key's ref too.
func TestPullByWeakKey(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	p := testenv.WriteDepsProject(t, "")
	builder := testenv.NewBst(t)
	builder.UseCaches(t, testenv.BstRemote{URL: srv.URL(), Push: true})
	builder.Run(t, p.Dir, "build", "apps/app.bst")
	builder.Run(t, p.Dir, "push", "apps/app.bst")
	strong := strings.TrimSpace(builder.Output(t, p.Dir, "show", "--deps", "none", "--format", "%{full-key}", "apps/app.bst"))
	var weak string
	for _, r := range testenv.RefsOnDisk(t, builder.ArtifactDir()) {
		if strings.HasPrefix(r, "demo/apps-app/") && !strings.HasSuffix(r, strong) {
			weak = r
		}
	}
	if weak == "" {
		t.Fatal("bst stored no weak ref for app")
	}
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), false))
	local := t.TempDir()
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "pull", weak); code != 0 {
		t.Fatalf("pull by weak key: exit %d\n%s", code, stderr)
	}
	// which shows the artifact's other ref.
	stdout, _, code := runCLI(t, "", "--config", cfg, "--json", "which", weak)
	var locs []struct{ Refs []string }
	if err := decodeDoc(stdout, &locs); err != nil || code != 0 || len(locs) != 1 || !cmp.Equal(locs[0].Refs, []string{weak, "demo/apps-app/" + strong}) {
		t.Errorf("which --json of the weak ref: exit %d, %v, %s; want its refs, weak then strong", code, err, stdout)
	}
	want := []string{"demo/apps-app/" + strong, weak}
	sort.Strings(want)
	if diff := cmp.Diff(want, testenv.RefsOnDisk(t, local)); diff != "" {
		t.Errorf("refs after a pull by weak key (-want +got):\n%s", diff)
	}
}

// CI promotes an element's whole closure in one command: copy --from
// latest --to releases --deps all apps/app.bst (caches named by URL in a
// bst-cache.toml beside project.conf), then a fresh bst configured with
// releases only pulls every element, strict and not, and checks out the
// same files. With no project at hand, copy --deps all REF moves the same
// closure as the element form.
func TestPromoteElementClosure(t *testing.T) {
	latest := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	releases := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	byRef := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	p, builder := builtDepsProject(t, latest)
	if err := os.WriteFile(filepath.Join(p.Dir, "bst-cache.toml"), []byte(
		cacheTOML("latest", latest.URL(), false)+cacheTOML("releases", releases.URL(), true)+cacheTOML("by-ref", byRef.URL(), true)), 0o644); err != nil {
		t.Fatal(err)
	}
	ci := testenv.NewBst(t)
	ci.UseCaches(t)
	_, stderr, code := runAs(t, ci, p.Dir, "copy", "--from", "latest", "--to", "releases", "--deps", "all", "apps/app.bst")
	if code != 0 {
		t.Fatalf("copy --deps all apps/app.bst: exit %d\n%s", code, stderr)
	}
	if diff := cmp.Diff(testenv.RefsOnDisk(t, builder.ArtifactDir()), testenv.RefsOnDisk(t, releases.Dir)); diff != "" {
		t.Errorf("refs on releases (-built +promoted):\n%s", diff)
	}
	want := testenv.TreeSnapshot(t, builder.Checkout(t, p, "apps/app.bst"))
	for _, strict := range []bool{true, false} {
		fresh := testenv.NewBst(t)
		fresh.UseCaches(t, testenv.BstRemote{URL: releases.URL()})
		fresh.WriteUserConfig(t, "projects:\n  demo:\n    artifacts:\n    - url: "+releases.URL()+"\n")
		args := []string{"pull", "--deps", "all", "apps/app.bst"}
		if !strict {
			args = append([]string{"--no-strict"}, args...)
		}
		// project.conf recommends latest: stop bst from using it.
		latest.Stop()
		fresh.Run(t, p.Dir, args...)
		if got := states(t, fresh, p, strict); strings.Contains(got, "buildable") || strings.Contains(got, "waiting") {
			t.Errorf("after bst pull from releases (strict=%t): %s", strict, got)
		}
		if diff := cmp.Diff(want, testenv.TreeSnapshot(t, fresh.Checkout(t, p, "apps/app.bst"))); diff != "" {
			t.Errorf("checkout from releases (strict=%t) (-built +promoted):\n%s", strict, diff)
		}
	}

	// No project at hand: lib's ref with --deps all moves lib and base,
	// as lib.bst with --deps all did.
	latest2 := testenv.StartServe(t, testenv.ServeOptions{Push: true, Dir: latest.Dir})
	key := strings.TrimSpace(builder.Output(t, p.Dir, "show", "--deps", "none", "--format", "%{full-key}", "lib.bst"))
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("latest", latest2.URL(), false)+cacheTOML("by-ref", byRef.URL(), true))
	_, stderr, code = runCLI(t, t.TempDir(), "--config", cfg, "copy", "--from", "latest", "--to", "by-ref", "--deps", "all", "demo/lib/"+key)
	if code != 0 {
		t.Fatalf("copy --deps all REF: exit %d\n%s", code, stderr)
	}
	var libClosure []string
	for _, r := range testenv.RefsOnDisk(t, releases.Dir) {
		if strings.HasPrefix(r, "demo/lib/") || strings.HasPrefix(r, "demo/base/") {
			libClosure = append(libClosure, r)
		}
	}
	if diff := cmp.Diff(libClosure, testenv.RefsOnDisk(t, byRef.Dir)); diff != "" {
		t.Errorf("copy --deps all of lib's ref (-element form +ref form):\n%s", diff)
	}
}

// rm removes an artifact with both its refs from BuildStream's own cache
// (bst then sees it as not cached, and the rest as cached); du measures
// refs and the store.
func TestRmAndDuOnBuildStreamCache(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	p, builder := builtDepsProject(t, srv)
	before := testenv.RefsOnDisk(t, builder.ArtifactDir())

	stdout, stderr, code := runAs(t, builder, p.Dir, "--json", "du")
	var du struct {
		Refs []struct {
			Ref   string
			Bytes int64
		}
		Store struct {
			Bytes       int64
			Objects     int
			UniqueBytes int64 `json:"unique_bytes"`
		}
	}
	if err := decodeDoc(stdout, &du); err != nil || code != 0 || len(du.Refs) != len(before) || du.Store.UniqueBytes == 0 || du.Store.UniqueBytes > du.Store.Bytes {
		t.Errorf("du: exit %d, %v, %+v\n%s", code, err, du, stderr)
	}

	if _, stderr, code := runAs(t, builder, p.Dir, "rm", "--dry-run", "apps/app.bst"); code != 0 || len(testenv.RefsOnDisk(t, builder.ArtifactDir())) != len(before) {
		t.Errorf("rm --dry-run removed something: exit %d\n%s", code, stderr)
	}
	if _, stderr, code := runAs(t, builder, p.Dir, "rm", "apps/app.bst"); code != 0 {
		t.Fatalf("rm apps/app.bst: exit %d\n%s", code, stderr)
	}
	var left []string
	for _, r := range before {
		if !strings.HasPrefix(r, "demo/apps-app/") {
			left = append(left, r)
		}
	}
	if diff := cmp.Diff(left, testenv.RefsOnDisk(t, builder.ArtifactDir())); diff != "" {
		t.Errorf("refs after rm apps/app.bst (-want +got):\n%s", diff)
	}
	srv.Stop() // bst must not pull it back
	if got := states(t, builder, p, true); got != "base.bst=cached\nlib.bst=cached\nsub.bst:libsub.bst=cached\napps/app.bst=buildable" {
		t.Errorf("bst show after rm:\n%s", got)
	}
	if _, _, code := runAs(t, builder, p.Dir, "rm", "demo/none/0"); code != 3 {
		t.Errorf("rm of a ref not in the store: exit %d, want 3", code)
	}
}
