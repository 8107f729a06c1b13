package commands_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// bst-cache checkout writes what bst checkout writes (modes, symlinks,
// empty files, an empty directory, a large file), pulling the artifact
// first; --no-pull refuses a ref that is not local (exit 3).
func TestCheckoutMatchesBst(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	p, builder, refs := builtProject(t, srv)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), false))
	local := t.TempDir()
	ref := bigRef(t, refs)
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "checkout", "--no-pull", ref, filepath.Join(t.TempDir(), "x")); code != 3 {
		t.Errorf("checkout --no-pull of a ref not local: exit %d; want 3\n%s", code, stderr)
	}
	want := testenv.TreeSnapshot(t, builder.Checkout(t, p, "hello.bst"))
	for _, copy := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "out")
		args := []string{"--config", cfg, "--local", local, "checkout", ref, dir}
		if copy {
			args = append(args[:5:5], append([]string{"--copy"}, args[5:]...)...)
		}
		stdout, stderr, code := runCLI(t, "", args...)
		if code != 0 || !strings.Contains(stdout, "files checked out") {
			t.Fatalf("checkout %v: exit %d\n%s", args, code, stderr)
		}
		if diff := cmp.Diff(want, testenv.TreeSnapshot(t, dir)); diff != "" {
			t.Errorf("bst-cache checkout (copy=%t) vs bst checkout (-bst +bst-cache):\n%s", copy, diff)
		}
	}
}
