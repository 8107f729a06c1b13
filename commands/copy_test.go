package commands_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
)

// BuildStream 1.6 end to end: bst pushes to bst-artifact-server A,
// bst-cache copies A to B (another bst-artifact-server, or serve), and a
// fresh bst with only B configured pulls and checks out identical files.
func TestCopyBetweenServers(t *testing.T) {
	for _, target := range []string{"bst-artifact-server", "serve"} {
		t.Run(target, func(t *testing.T) {
			a := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
			b := startPushServer(t, target)
			p, builder, refs := builtProject(t, a)
			cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("a", a.URL(), false)+cacheTOML("b", b.URL(), true))
			local := t.TempDir()

			_, stderr, code := runCLI(t, "", append([]string{"--config", cfg, "--local", local, "copy", "--from", "a", "--to", "b", "--dry-run"}, refs...)...)
			if code != 0 || len(testenv.RefsOnDisk(t, b.Dir)) != 0 {
				t.Fatalf("dry run: exit %d, target refs %v\n%s", code, testenv.RefsOnDisk(t, b.Dir), stderr)
			}
			_, stderr, code = runCLI(t, "", append([]string{"--config", cfg, "--local", local, "copy", "--from", "a", "--to", "b"}, refs...)...)
			if code != 0 {
				t.Fatalf("copy: exit %d\n%s", code, stderr)
			}
			if diff := cmp.Diff(refs, testenv.RefsOnDisk(t, b.Dir)); diff != "" {
				t.Errorf("refs on B (-A +B):\n%s", diff)
			}
			pullSameFiles(t, p, builder, b.URL())
			// A no-op copy moves nothing.
			_, stderr, code = runCLI(t, "", append([]string{"--config", cfg, "--local", local, "copy", "--from", "a", "--to", "b"}, refs...)...)
			if code != 0 || !strings.Contains(stderr, "0 blobs") {
				t.Errorf("second copy: exit %d\n%s", code, stderr)
			}
		})
	}
}

// Promotion is no-clobber: a target naming another digest is left alone
// and reported (exit 1), the other refs still go; --force overwrites.
func TestCopyNoClobber(t *testing.T) {
	latest := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	releases := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, latest)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("latest", latest.URL(), false)+cacheTOML("releases", releases.URL(), true))

	cc := config.Cache{Name: "releases", URL: releases.URL(), Type: config.TypeAll, MaxConcurrency: 2,
		Endpoint:   config.Endpoint{Target: releases.Addr},
		Connection: config.Connection{ConnectTimeout: 5 * time.Second, RequestTimeout: 30 * time.Second, RetryDelay: 50 * time.Millisecond}}
	r, err := remotes.Dial(context.Background(), cc)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// releases already names the empty Directory for the first ref.
	if err := r.UpdateReference(context.Background(), []string{refs[0]}, digest.Empty); err != nil {
		t.Fatal(err)
	}
	local := t.TempDir()
	stdout, stderr, code := runCLI(t, "", append([]string{"--config", cfg, "--local", local, "copy", "--to", "releases"}, refs...)...)
	if code != 1 || !strings.Contains(stdout, "conflict") || !strings.Contains(stdout, refs[0]) || !strings.Contains(stderr, "1 conflict") {
		t.Errorf("copy over a different digest: exit %d; want 1 with a conflict\n%s", code, stderr)
	}
	if got, _ := r.GetReference(context.Background(), refs[0]); got != digest.Empty {
		t.Errorf("the conflicting ref was overwritten: %v", got)
	}
	for _, ref := range refs[1:] {
		if _, err := r.GetReference(context.Background(), ref); err != nil {
			t.Errorf("%s was not copied alongside the conflict: %v", ref, err)
		}
	}
	_, stderr, code = runCLI(t, "", append([]string{"--config", cfg, "--local", local, "copy", "--to", "releases", "--force"}, refs[0])...)
	if code != 0 {
		t.Errorf("copy --force: exit %d\n%s", code, stderr)
	}
	if got, _ := r.GetReference(context.Background(), refs[0]); got == digest.Empty {
		t.Error("--force did not overwrite")
	}
}
