package commands_test

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// builtElements are the elements whose build steps bst printed
// ("[build:base.bst ]" lines), sorted.
func builtElements(out string) []string {
	seen := map[string]bool{}
	for _, m := range regexp.MustCompile(`\[build:([^\] ]+)\s*\]`).FindAllStringSubmatch(out, -1) {
		seen[m[1]] = true
	}
	var els []string
	for el := range seen {
		els = append(els, el)
	}
	sort.Strings(els)
	return els
}

// After a dependency changes locally (base.bst), bst 1.6's `bst
// --no-strict pull --deps all` still fetches lib.bst and apps/app.bst by
// their weak keys. bst-cache pull does the same with --no-strict and with
// BuildStream's `projects: demo: strict: false`: the same refs land in
// BuildStream's cache, and `bst --no-strict build` then builds base.bst
// alone. base.bst, in no cache, makes the pull exit 3 unless
// --ignore-missing. The results name each element beside its ref.
func TestPullNonStrict(t *testing.T) {
	bas := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
	p, _ := builtDepsProject(t, bas)
	if err := os.WriteFile(filepath.Join(p.Dir, "files/base/etc/base.txt"), []byte("base, changed locally\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	reference := testenv.NewBst(t)
	reference.Run(t, p.Dir, "--no-strict", "pull", "--deps", "all", "apps/app.bst")
	want := testenv.RefsOnDisk(t, reference.ArtifactDir())
	// lib and app twice (strong and weak), libsub once; base in no cache.
	if len(want) != 5 {
		t.Fatalf("bst --no-strict pull stored %d refs, want 5: %v", len(want), want)
	}

	// Strict (the default): only libsub comes; exit 3, or 0 with
	// --ignore-missing, the misses still listed.
	strict := testenv.NewBst(t)
	stdout, stderr, code := runAs(t, strict, p.Dir, "pull", "--deps", "all", "apps/app.bst")
	if code != 3 || strings.Count(stdout, "missing") != 3 {
		t.Errorf("strict pull after a local change: exit %d, want 3 with 3 missing\n%s%s", code, stdout, stderr)
	}
	stdout, stderr, code = runAs(t, strict, p.Dir, "pull", "--ignore-missing", "--deps", "all", "apps/app.bst")
	if code != 0 || strings.Count(stdout, "missing") != 3 || !strings.Contains(stderr, "3 missing") {
		t.Errorf("pull --ignore-missing: exit %d, want 0 listing 3 missing\n%s%s", code, stdout, stderr)
	}

	flag := testenv.NewBst(t)
	stdout, stderr, code = runAs(t, flag, p.Dir, "pull", "--no-strict", "--deps", "all", "apps/app.bst")
	if code != 3 || strings.Count(stdout, "missing") != 1 || !strings.Contains(stdout, "by its weak key") {
		t.Errorf("pull --no-strict: exit %d, want 3 with base alone missing\n%s%s", code, stdout, stderr)
	}
	// Element names beside their refs.
	for _, el := range []string{"base.bst", "lib.bst", "sub.bst:libsub.bst", "apps/app.bst"} {
		if !regexp.MustCompile(`(?m)^\S+\s+` + regexp.QuoteMeta(el) + `\s+demo/|^\S+\s+` + regexp.QuoteMeta(el) + `\s+sub/`).MatchString(stdout) {
			t.Errorf("no result line names %s beside its ref:\n%s", el, stdout)
		}
	}
	if diff := cmp.Diff(want, testenv.RefsOnDisk(t, flag.ArtifactDir())); diff != "" {
		t.Errorf("refs after pull --no-strict (-bst --no-strict pull +bst-cache):\n%s", diff)
	}

	config := testenv.NewBst(t)
	config.WriteUserConfig(t, "projects:\n  demo:\n    strict: false\n")
	stdout, stderr, code = runAs(t, config, p.Dir, "--json", "pull", "--ignore-missing", "--deps", "all", "apps/app.bst")
	var rep struct {
		Refs []struct{ Ref, Element, Status string }
	}
	if err := decodeDoc(stdout, &rep); err != nil || code != 0 {
		t.Fatalf("pull with strict: false in BuildStream's configuration: exit %d, %v\n%s%s", code, err, stdout, stderr)
	}
	var got []string
	for _, r := range rep.Refs {
		got = append(got, r.Element+" "+r.Status)
		if want := "demo/" + strings.TrimSuffix(strings.ReplaceAll(r.Element, "/", "-"), ".bst") + "/"; r.Element != "sub.bst:libsub.bst" && !strings.HasPrefix(r.Ref, want) {
			t.Errorf("element %s beside ref %s", r.Element, r.Ref)
		}
	}
	if diff := cmp.Diff([]string{"base.bst missing", "lib.bst done", "sub.bst:libsub.bst done", "apps/app.bst done"}, got); diff != "" {
		t.Errorf("--json results by element (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, testenv.RefsOnDisk(t, config.ArtifactDir())); diff != "" {
		t.Errorf("refs after a pull with strict: false (-bst --no-strict pull +bst-cache):\n%s", diff)
	}

	bas.Stop() // bst builds from its own cache alone
	for name, b := range map[string]*testenv.Bst{"--no-strict": flag, "strict: false": config} {
		if got := builtElements(b.Run(t, p.Dir, "--no-strict", "build", "apps/app.bst")); !cmp.Equal(got, []string{"base.bst"}) {
			t.Errorf("bst --no-strict build after bst-cache pull (%s) built %v, want base.bst alone", name, got)
		}
	}
	if got := builtElements(strict.Run(t, p.Dir, "--no-strict", "build", "apps/app.bst")); len(got) != 3 {
		t.Errorf("bst --no-strict build after a strict bst-cache pull built %v; want base, lib and app (the test's baseline)", got)
	}
}

// which and --json name the element beside its ref; an unknown element
// quotes bst's own reason.
func TestElementNames(t *testing.T) {
	bas := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
	p, _ := builtDepsProject(t, bas)
	fresh := testenv.NewBst(t)

	stdout, stderr, code := runAs(t, fresh, p.Dir, "which", "--deps", "all", "apps/app.bst")
	if code != 0 || !regexp.MustCompile(`(?m)^ELEMENT\s+REF\s`).MatchString(stdout) || !regexp.MustCompile(`(?m)^apps/app\.bst\s+demo/apps-app/\w+\s+yes`).MatchString(stdout) {
		t.Errorf("which of elements: exit %d\n%s%s", code, stdout, stderr)
	}
	stdout, stderr, code = runAs(t, fresh, p.Dir, "--json", "which", "lib.bst")
	var locs []struct{ Ref, Element string }
	if err := decodeDoc(stdout, &locs); err != nil || code != 0 || len(locs) != 1 || locs[0].Element != "lib.bst" || !strings.HasPrefix(locs[0].Ref, "demo/lib/") {
		t.Errorf("which --json lib.bst: exit %d, %v\n%s%s", code, err, stdout, stderr)
	}
	// Refs alone keep the table as it was.
	stdout, _, _ = runAs(t, fresh, p.Dir, "which", locs[0].Ref)
	if strings.Contains(stdout, "ELEMENT") {
		t.Errorf("which of a ref grew an element column:\n%s", stdout)
	}

	// --strict is --fail-on-cache-error's old name: it still works, and
	// says so, since bst users read it as BuildStream's strict mode.
	if _, stderr, code := runAs(t, fresh, p.Dir, "pull", "--strict", "lib.bst"); code != 0 || !strings.Contains(stderr, "--strict is deprecated: it means --fail-on-cache-error") {
		t.Errorf("pull --strict: exit %d, want 0 with a deprecation warning\n%s", code, stderr)
	}

	_, stderr, code = runAs(t, fresh, p.Dir, "pull", "nosuch.bst")
	if code != 2 || !strings.Contains(stderr, "Could not find element 'nosuch.bst' in elements directory") || strings.Contains(stderr, "FAILURE") {
		t.Errorf("pull of an unknown element: exit %d, want 2 with bst's reason\n%s", code, stderr)
	}
	_, stderr, code = runAs(t, fresh, p.Dir, "pull", "--no-strict", "nosuch.bst")
	if code != 2 || !strings.Contains(stderr, "Could not find element 'nosuch.bst' in elements directory") {
		t.Errorf("pull --no-strict of an unknown element: exit %d, want 2 with bst's reason\n%s", code, stderr)
	}
}

// After base.bst changes locally, apps/app.bst is in the cache by its
// weak key alone. `which --no-strict` names that weak ref beside the
// strict one (which no cache holds) and exits 0; with strict:
// false in BuildStream's configuration, `checkout` after a non-strict pull
// takes the weak-key artifact and writes what `bst --no-strict checkout`
// writes; `checkout --no-strict` pulls it by its weak key itself. Strict,
// both still say missing (exit 3).
func TestCheckoutWhichNonStrict(t *testing.T) {
	bas := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
	p, builder := builtDepsProject(t, bas)
	strong := "demo/apps-app/" + strings.TrimSpace(builder.Output(t, p.Dir, "show", "--deps", "none", "--format", "%{full-key}", "apps/app.bst"))
	if err := os.WriteFile(filepath.Join(p.Dir, "files/base/etc/base.txt"), []byte("base, changed locally\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// bst's own non-strict pull and checkout: the reference, and the
	// weak ref (the apps-app ref beside the strong one).
	reference := testenv.NewBst(t)
	reference.Run(t, p.Dir, "--no-strict", "pull", "apps/app.bst")
	var weak string
	for _, r := range testenv.RefsOnDisk(t, reference.ArtifactDir()) {
		if strings.HasPrefix(r, "demo/apps-app/") && r != strong {
			weak = r
		}
	}
	if weak == "" {
		t.Fatalf("bst --no-strict pull stored no weak ref for apps/app.bst: %v", testenv.RefsOnDisk(t, reference.ArtifactDir()))
	}
	want := filepath.Join(t.TempDir(), "bst")
	reference.Run(t, p.Dir, "--no-strict", "checkout", "--deps", "none", "apps/app.bst", want)
	if len(testenv.TreeSnapshot(t, want)) == 0 {
		t.Fatal("bst --no-strict checkout wrote nothing: the comparison below would prove nothing")
	}

	fresh := testenv.NewBst(t)
	stdout, stderr, code := runAs(t, fresh, p.Dir, "which", "apps/app.bst")
	if code != 3 || strings.Contains(stdout, weak) {
		t.Errorf("strict which after a local change: exit %d, want 3 without the weak ref\n%s%s", code, stdout, stderr)
	}
	stdout, stderr, code = runAs(t, fresh, p.Dir, "which", "--no-strict", "apps/app.bst")
	if code != 0 || !strings.Contains(stdout, "by weak key: "+weak) || !regexp.MustCompile(`(?m)^apps/app\.bst\s+`+regexp.QuoteMeta(weak)+`\s+yes`).MatchString(stdout) {
		t.Errorf("which --no-strict: exit %d, want 0 naming the weak ref %s present\n%s%s", code, weak, stdout, stderr)
	}
	if _, stderr, code := runAs(t, fresh, p.Dir, "checkout", "apps/app.bst", filepath.Join(t.TempDir(), "strict")); code != 3 {
		t.Errorf("strict checkout after a local change: exit %d, want 3\n%s", code, stderr)
	}

	config := testenv.NewBst(t)
	config.WriteUserConfig(t, "projects:\n  demo:\n    strict: false\n")
	if _, stderr, code := runAs(t, config, p.Dir, "pull", "apps/app.bst"); code != 0 {
		t.Fatalf("pull with strict: false: exit %d\n%s", code, stderr)
	}
	for name, run := range map[string]struct {
		b    *testenv.Bst
		args []string
	}{
		"strict: false, after a pull": {config, []string{"checkout", "--no-pull", "apps/app.bst"}},
		"--no-strict, pulling":        {fresh, []string{"checkout", "--no-strict", "apps/app.bst"}},
	} {
		dir := filepath.Join(t.TempDir(), "out")
		stdout, stderr, code := runAs(t, run.b, p.Dir, append(run.args, dir)...)
		if code != 0 || !strings.HasPrefix(stdout, weak+": ") || !strings.Contains(stdout, "by weak key") {
			t.Errorf("checkout (%s): exit %d, want 0 from the weak ref %s\n%s%s", name, code, weak, stdout, stderr)
			continue
		}
		if diff := cmp.Diff(testenv.TreeSnapshot(t, want), testenv.TreeSnapshot(t, dir)); diff != "" {
			t.Errorf("checkout (%s) vs bst --no-strict checkout (-bst +bst-cache):\n%s", name, diff)
		}
	}
}
