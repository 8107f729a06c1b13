package commands_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/linksim"
	"github.com/bst-cache/bst-cache/internal/testenv"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// --deps reads the dependencies of a batch's refs at once, not one ref
// after another: over a link with 80 ms round trips, which --deps all of 32
// BuildStream 2 artifacts (a real serve), each with a dependency of its
// own, takes a few round trips a level of the graph (1.6-1.8 s in all,
// connecting included). Before, each of the 64 refs cost its round trips
// in turn (an asset lookup and the Artifact's read: 12 s in all); the bound
// is 1.5 round trips a ref named, 3.8 s.
func TestDepsExpandedAtOnceOverSlowLink(t *testing.T) {
	origin := t.TempDir()
	s, err := cache.Open(origin, cache.KindBst2Artifact)
	if err != nil {
		t.Fatal(err)
	}
	const n = 32
	var refs, want []string
	for i := range n {
		lib := fmt.Sprintf("lib%02d", i)
		want = append(want, bst2Artifact(t, s, "proj", lib, fmt.Sprintf("l%02d", i), fmt.Sprintf("l%02d", i)))
		app := bst2Artifact(t, s, "proj", fmt.Sprintf("app%02d", i), fmt.Sprintf("a%02d", i), fmt.Sprintf("a%02d", i),
			&bspb.Artifact_Dependency{ProjectName: "proj", ElementName: lib + ".bst", CacheKey: fmt.Sprintf("l%02d", i)})
		refs = append(refs, app)
	}
	srv := testenv.StartServe(t, testenv.ServeOptions{Dir: origin})
	const rtt = 80 * time.Millisecond
	_, addr := testenv.StartLink(t, srv.Addr, linksim.Profile{Delay: rtt / 2})
	cfg := writeConfig(t, "format = \"bst2\"\n"+cacheTOML("far", "grpc://"+addr, false))
	start := time.Now()
	stdout, stderr, code := runCLI(t, "", append([]string{"--config", cfg, "--local", t.TempDir(), "which", "--deps", "all"}, refs...)...)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("which --deps all: exit %d\n%s%s", code, stdout, stderr)
	}
	// Each ref named, then the dependencies, breadth first.
	for i, r := range append(refs, want...) {
		if !strings.Contains(stdout, r+" ") {
			t.Errorf("which --deps all: ref %d (%s) not listed\n%s", i, r, stdout)
		}
	}
	if last, first := strings.Index(stdout, refs[n-1]), strings.Index(stdout, want[0]); last > first {
		t.Errorf("which --deps all: a dependency listed before the last ref named\n%s", stdout)
	}
	t.Logf("which --deps all of %d refs and their %d dependencies over %v round trips: %v", n, n, rtt, took)
	if bound := 3 * n * rtt / 2; took > bound {
		t.Errorf("which --deps all of %d refs and %d dependencies took %v over %v round trips; want under %v (the dependencies read a ref at a time)", n, n, took, rtt, bound)
	}
}
