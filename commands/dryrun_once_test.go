package commands_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// A dry run says what the real run then moves. A push and a copy of what
// ls prints (each artifact under its strong and weak ref), where artifacts
// also share files: the dry run counted every blob once per ref and a
// shared blob once per artifact, twice or more what the real run, which
// moves an artifact once and a blob once per target, then sent. Now the
// dry run's totals equal the real run's, and each artifact's second ref
// would move with its first. Against serve.
func TestDryRunCountsWhatTheRunMoves(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	// Artifact i of project b holds the first 3 of the 6 files of
	// artifact i of project a, and the same keys.yaml.
	testenv.Genrefs(t, src, "-project", "a", "-n", "5", "-files", "6", "-size", "30000")
	testenv.Genrefs(t, src, "-project", "b", "-n", "5", "-files", "3", "-size", "30000")
	refsFile, refs := lsRefs(t, src)
	if len(refs) != 20 {
		t.Fatalf("ls lists %d refs, want 10 artifacts under 2 refs each", len(refs))
	}
	a := testenv.StartServe(t, testenv.ServeOptions{Dir: src})

	check := func(name string, args ...string) {
		t.Helper()
		b := testenv.StartServe(t, testenv.ServeOptions{Push: true})
		cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("a", a.URL(), false)+cacheTOML("b", b.URL(), true))
		run := func(extra ...string) pullReport {
			t.Helper()
			rep, stderr, code := runJSON(t, append(append([]string{"--config", cfg}, args...), append(extra, "--refs-from", refsFile)...)...)
			if code != 0 {
				t.Fatalf("%s %v: exit %d, %v\n%s", name, extra, code, rep.Counts, stderr)
			}
			return rep
		}
		dry := run("--dry-run")
		if got := testenv.RefsOnDisk(t, b.Dir); len(got) != 0 {
			t.Fatalf("%s --dry-run wrote %d refs to the target", name, len(got))
		}
		with := 0
		for _, r := range dry.Refs {
			if r.Blobs == 0 && strings.HasPrefix(r.Reason, "would move once with ") {
				with++
			}
		}
		real := run()
		t.Logf("%s: dry run would move %d blobs, %d bytes; the run pushed %d blobs, %d bytes", name, dry.BlobsWould, dry.BytesWould, real.Pushed.Blobs, real.Pushed.Bytes)
		if dry.BlobsWould != real.Pushed.Blobs || dry.BytesWould != real.Pushed.Bytes || real.Pushed.Bytes == 0 {
			t.Errorf("%s: the dry run would move %d blobs (%d bytes), the run pushed %d blobs (%d bytes); want equal", name, dry.BlobsWould, dry.BytesWould, real.Pushed.Blobs, real.Pushed.Bytes)
		}
		if with != len(refs)/2 {
			t.Errorf("%s --dry-run: %d refs would move once with another; want %d (each artifact's second ref)\n%s", name, with, len(refs)/2, statuses(dry))
		}
		if real.Counts["done"] != len(refs) {
			t.Errorf("%s: %v; want done for all %d refs", name, real.Counts, len(refs))
		}
	}
	check("push", "--local", src, "push", "--cache", "b")
	check("copy", "--local", t.TempDir(), "copy", "--from", "a", "--to", "b")
}
