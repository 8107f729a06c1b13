package commands_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// Mirrors configured in a loop (A fills from B, B from A) answer a ref
// neither holds with a miss at once, instead of asking each other until
// their calls time out; a ref one of them holds is served by both.
func TestMirrorLoopIsAMiss(t *testing.T) {
	pa, pb := testenv.FreePort(t), testenv.FreePort(t)
	urlA, urlB := fmt.Sprintf("http://127.0.0.1:%d", pa), fmt.Sprintf("http://127.0.0.1:%d", pb)
	a := testenv.StartServe(t, testenv.ServeOptions{Port: pa, Push: true,
		Env: []string{"BST_CACHE_CONFIG=" + writeConfig(t, cacheTOML("b", urlB, false))}, Args: []string{"--upstream", "b"}})
	b := testenv.StartServe(t, testenv.ServeOptions{Port: pb,
		Env: []string{"BST_CACHE_CONFIG=" + writeConfig(t, cacheTOML("a", urlA, false))}, Args: []string{"--upstream", "a"}})
	_, _, refs := builtProject(t, a)

	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("b", urlB, false))
	start := time.Now()
	_, stderr, code := runCLI(t, "", "--config", cfg, "--local", t.TempDir(), "pull", "demo/none/0000")
	if code != 3 {
		t.Fatalf("pull of a ref neither mirror holds: exit %d, want 3 (missing)\n%s\nA: %s\nB: %s", code, stderr, a.Log(), b.Log())
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the miss took %s: the mirrors asked each other", took)
	}
	if _, stderr, code := runCLI(t, "", append([]string{"--config", cfg, "--local", t.TempDir(), "pull"}, refs...)...); code != 0 {
		t.Fatalf("pull through B of refs A holds: exit %d\n%s\nB: %s", code, stderr, b.Log())
	}
	if !strings.Contains(b.Log(), "filled") {
		t.Errorf("B's log does not say it filled from A:\n%s", b.Log())
	}
}
