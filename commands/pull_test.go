package commands_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// builtProject builds the demo project with bst 1.6 and pushes it to srv.
func builtProject(t *testing.T, srv *testenv.Server) (*testenv.Project, *testenv.Bst, []string) {
	t.Helper()
	p := testenv.WriteProject(t, "demo")
	b := testenv.NewBst(t)
	b.UseCaches(t, testenv.BstRemote{URL: srv.URL(), Push: true})
	b.Run(t, p.Dir, append([]string{"build"}, p.Elements...)...)
	b.Run(t, p.Dir, append([]string{"push"}, p.Elements...)...)
	return p, b, testenv.RefsOnDisk(t, b.ArtifactDir())
}

// startPushServer starts a server that accepts pushes: "serve" or
// "bst-artifact-server".
func startPushServer(t *testing.T, kind string) *testenv.Server {
	t.Helper()
	if kind == "serve" {
		return testenv.StartServe(t, testenv.ServeOptions{Push: true})
	}
	return testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
}

// cacheTOML is one [[cache]] entry.
func cacheTOML(name, url string, push bool) string {
	return fmt.Sprintf("[[cache]]\nname = %q\nurl = %q\npush = %v\n[cache.connection]\nretry-limit = 1\nconnect-timeout = \"10s\"\n\n", name, url, push)
}

type pullReport struct {
	Refs []struct {
		Ref, Status, Cache, Target, Reason string
		Blobs, Bytes                       int64
	}
	Counts         map[string]int
	Pulled, Pushed struct{ Blobs, Bytes int64 }
	BlobsWould     int64 `json:"blobs_would_transfer"`
	BytesWould     int64 `json:"bytes_would_transfer"`
	Seconds        float64
}

// moved is the blobs that crossed the wire either way.
func (r pullReport) moved() int64 { return r.Pulled.Blobs + r.Pushed.Blobs }

// bst-cache fills BuildStream 1's own cache: after a pull, bst checks out
// with no cache configured, and the files are identical. A dead cache first
// in the list costs one warning.
func TestPullFillsBstCache(t *testing.T) {
	for _, server := range []string{"bst-artifact-server", "serve"} {
		t.Run(server, func(t *testing.T) {
			srv := startPushServer(t, server)
			p, builder, refs := builtProject(t, srv)
			want := map[string]map[string]string{}
			for _, el := range p.Elements {
				want[el] = testenv.TreeSnapshot(t, builder.Checkout(t, p, el))
			}

			dead := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
			cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("dead", dead, false)+cacheTOML(server, srv.URL(), false))
			fresh := testenv.NewBst(t)
			fresh.UseCaches(t)
			stdout, stderr, code := runCLI(t, "", append([]string{"--config", cfg, "--local", fresh.ArtifactDir(), "--json", "pull"}, refs...)...)
			if code != 0 {
				t.Fatalf("pull: exit %d\n%s", code, stderr)
			}
			if n := strings.Count(stderr, "cache dead ("+dead+")"); n != 1 {
				t.Errorf("want one warning naming the dead cache and its URL, got %d:\n%s", n, stderr)
			}
			var rep pullReport
			if err := decodeDoc(stdout, &rep); err != nil {
				t.Fatalf("--json output: %v\n%s", err, stdout)
			}
			for _, r := range rep.Refs {
				if r.Status != "done" || r.Cache != server {
					t.Errorf("ref %s: %s from %q (%s)", r.Ref, r.Status, r.Cache, r.Reason)
				}
			}
			if diff := cmp.Diff(refs, testenv.RefsOnDisk(t, fresh.ArtifactDir())); diff != "" {
				t.Errorf("refs in bst's cache after pull (-pushed +pulled):\n%s", diff)
			}
			for _, el := range p.Elements {
				if diff := cmp.Diff(want[el], testenv.TreeSnapshot(t, fresh.Checkout(t, p, el))); diff != "" {
					t.Errorf("%s checked out after bst-cache pull (-built +pulled):\n%s", el, diff)
				}
			}

			// Again: nothing moves.
			stdout, _, code = runCLI(t, "", "--config", cfg, "--local", fresh.ArtifactDir(), "--json", "pull", refs[0])
			if err := decodeDoc(stdout, &rep); err != nil || code != 0 || rep.Counts["skipped"] != 1 || rep.moved() != 0 {
				t.Errorf("second pull: exit %d, %+v, %v", code, rep, err)
			}
		})
	}
}

// Exit codes: 3 when a ref is in no cache (the others still complete), 2 for
// a bad ref before any network call.
func TestPullExitCodes(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, srv)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), false))
	local := filepath.Join(t.TempDir(), "store")
	stdout, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "pull", refs[0], "demo/nothing/0000")
	// Results on stdout, one line each; the totals and the error on stderr.
	if code != 3 || !strings.Contains(stdout, "missing  demo/nothing/0000") || !strings.Contains(stdout, "done     "+refs[0]) ||
		strings.Contains(stderr, "demo/nothing/0000  ") || !strings.Contains(stderr, "1 ref is in no cache") {
		t.Errorf("a ref in no cache: exit %d; want 3 naming it\n%s", code, stderr)
	}
	if got := testenv.RefsOnDisk(t, local); len(got) != 1 || got[0] != refs[0] {
		t.Errorf("the ref that exists was not pulled alongside: %v", got)
	}
	// serve -v logs every call: a bad ref must be refused before any.
	before := srv.Log()
	for _, bad := range []string{"../etc/passwd", "/abs/ref", "a//b"} {
		_, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "pull", refs[0], bad)
		if code != 2 || !strings.Contains(stderr, "invalid ref") {
			t.Errorf("pull %q: exit %d; want 2\n%s", bad, code, stderr)
		}
	}
	if after := srv.Log(); after != before {
		t.Errorf("a pull with a bad ref reached the server:\n%s", strings.TrimPrefix(after, before))
	}
}
