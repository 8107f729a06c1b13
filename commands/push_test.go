package commands_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// bst-cache pushes what bst built locally; a fresh bst pulls it from the
// target and checks out identical files. A second push moves nothing.
func TestPushFromBstCache(t *testing.T) {
	for _, server := range []string{"bst-artifact-server", "serve"} {
		t.Run(server, func(t *testing.T) {
			srv := startPushServer(t, server)
			p := testenv.WriteProject(t, "demo")
			builder := testenv.NewBst(t)
			builder.UseCaches(t)
			builder.Run(t, p.Dir, append([]string{"build"}, p.Elements...)...)
			refs := testenv.RefsOnDisk(t, builder.ArtifactDir())
			cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("ro", srv.URL(), false)+cacheTOML("target", srv.URL(), true))

			_, stderr, code := runCLI(t, "", "--config", cfg, "--local", builder.ArtifactDir(), "push", "--cache", "ro", "demo/*")
			if code != 2 || !strings.Contains(stderr, `"ro" does not have push = true`) {
				t.Errorf("push to a cache without push = true: exit %d\n%s", code, stderr)
			}
			if got := testenv.RefsOnDisk(t, srv.Dir); len(got) != 0 {
				t.Fatalf("a refused push moved refs: %v", got)
			}

			_, stderr, code = runCLI(t, "", "--config", cfg, "--local", builder.ArtifactDir(), "push", "demo/*")
			if code != 0 {
				t.Fatalf("push: exit %d\n%s", code, stderr)
			}
			if diff := cmp.Diff(refs, testenv.RefsOnDisk(t, srv.Dir)); diff != "" {
				t.Errorf("refs on the target (-local +target):\n%s", diff)
			}
			pullSameFiles(t, p, builder, srv.URL())

			_, stderr, code = runCLI(t, "", "--config", cfg, "--local", builder.ArtifactDir(), "push", "demo/*")
			if code != 0 || !strings.Contains(stderr, fmt.Sprintf("0 done, %d skipped", len(refs))) || !strings.Contains(stderr, "0 blobs") {
				t.Errorf("second push should skip everything: exit %d\n%s", code, stderr)
			}
		})
	}
}
