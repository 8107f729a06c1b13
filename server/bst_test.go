package server_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// checkoutAll checks every element of p out of b's cache.
func checkoutAll(t *testing.T, b *testenv.Bst, p *testenv.Project) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, el := range p.Elements {
		out[el] = testenv.TreeSnapshot(t, b.Checkout(t, p, el))
	}
	return out
}

// calls counts the calls of a method with a code in a serve -v log.
func calls(log, method, code string) int {
	return len(regexp.MustCompile(regexp.QuoteMeta(method)+" "+code+" ").FindAllString(log, -1))
}

// Real BuildStream 1.6: build and push to serve, then a fresh client pulls
// and checks out identical files, all through the Remote Asset API.
func TestBstPushPullThroughServe(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	p := testenv.WriteProject(t, "demo")

	builder := testenv.NewBst(t)
	builder.UseCaches(t, testenv.BstRemote{URL: srv.URL(), Push: true})
	builder.Run(t, p.Dir, append([]string{"build"}, p.Elements...)...)
	builder.Run(t, p.Dir, append([]string{"push"}, p.Elements...)...)
	want := checkoutAll(t, builder, p)

	if diff := cmp.Diff(testenv.RefsOnDisk(t, builder.ArtifactDir()), testenv.RefsOnDisk(t, srv.Dir)); diff != "" {
		t.Errorf("refs on the server (-bst's local refs +server):\n%s", diff)
	}

	fresh := testenv.NewBst(t)
	fresh.UseCaches(t, testenv.BstRemote{URL: srv.URL()})
	fresh.Run(t, p.Dir, append([]string{"pull"}, p.Elements...)...)
	if diff := cmp.Diff(want, checkoutAll(t, fresh, p)); diff != "" {
		t.Errorf("checkout after pull from serve (-built +pulled):\n%s", diff)
	}

	log := srv.Log()
	// One artifact is two refs (strong and weak key; equal for imports).
	if n := calls(log, "/build.bazel.remote.asset.v1.Push/PushDirectory", "OK"); n < len(p.Elements) {
		t.Errorf("bst made %d successful PushDirectory calls; want at least %d (Remote Asset push)", n, len(p.Elements))
	}
	if n := calls(log, "/build.bazel.remote.asset.v1.Fetch/FetchDirectory", "OK"); n < len(p.Elements) {
		t.Errorf("bst made %d successful FetchDirectory calls; want at least %d (Remote Asset pull)", n, len(p.Elements))
	}
	for _, m := range []string{"/buildstream.v2.ReferenceStorage/UpdateReference", "/buildstream.v2.ReferenceStorage/GetReference"} {
		if strings.Contains(log, m) {
			t.Errorf("bst fell back to ReferenceStorage (%s) against serve", m)
		}
	}
	if t.Failed() {
		t.Logf("serve log:\n%s", log)
	}
}

// A directory bst-artifact-server filled is served as it is.
func TestTakeOverArtifactServerDirectory(t *testing.T) {
	as := testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Push: true})
	p := testenv.WriteProject(t, "demo")
	builder := testenv.NewBst(t)
	builder.UseCaches(t, testenv.BstRemote{URL: as.URL(), Push: true})
	builder.Run(t, p.Dir, append([]string{"build"}, p.Elements...)...)
	builder.Run(t, p.Dir, append([]string{"push"}, p.Elements...)...)
	want := checkoutAll(t, builder, p)
	refs := testenv.RefsOnDisk(t, as.Dir)
	if len(refs) == 0 {
		t.Fatal("bst-artifact-server holds no refs after bst push")
	}
	as.Stop()

	srv := testenv.StartServe(t, testenv.ServeOptions{Dir: as.Dir})
	fresh := testenv.NewBst(t)
	fresh.UseCaches(t, testenv.BstRemote{URL: srv.URL()})
	fresh.Run(t, p.Dir, append([]string{"pull"}, p.Elements...)...)
	if diff := cmp.Diff(want, checkoutAll(t, fresh, p)); diff != "" {
		t.Errorf("checkout after pull from serve (-built +pulled):\n%s", diff)
	}
	if diff := cmp.Diff(refs, testenv.RefsOnDisk(t, fresh.ArtifactDir())); diff != "" {
		t.Errorf("refs pulled (-bst-artifact-server's +pulled):\n%s", diff)
	}
	if !strings.Contains(srv.Log(), "(bst1 layout)") {
		t.Errorf("serve did not detect bst-artifact-server's layout:\n%s", srv.Log())
	}
}
