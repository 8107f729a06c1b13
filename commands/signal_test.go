package commands_test

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// An interrupted pull accounts for itself: the refs done and those cut
// short (interrupted) on stdout, the totals on stderr, exit 130 for Ctrl-C
// and 143 for SIGTERM. The stuck read stands for a slow link: a server
// trickling bytes.
func TestInterruptedRunSummary(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	origin := t.TempDir()
	bst1ArtifactSeeded(t, origin, "proj/small/key", 3, 1024, 1024, 1)
	bst1ArtifactSeeded(t, origin, "proj/big/key", 3, 1024, 6<<20, 2) // streamed
	refs := []string{"proj/small/key", "proj/big/key"}
	direct := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), true))
	if _, stderr, code := runCLI(t, "", append([]string{"--config", direct, "--local", origin, "push"}, refs...)...); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, stderr)
	}
	slow := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{Read: "trickle"})
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("slow", "http://"+slow, false))
	for sig, want := range map[syscall.Signal]int{syscall.SIGINT: 130, syscall.SIGTERM: 143} {
		local := t.TempDir()
		cmd := exec.Command(testenv.BstCacheBinary(t), append([]string{"--config", cfg, "--local", local, "pull"}, refs...)...)
		cmd.Env = append(os.Environ(), "BST_CACHE_CONFIG=", "HOME="+t.TempDir())
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Once small is pulled (big's large file trickles), interrupt.
		for deadline := time.Now().Add(30 * time.Second); len(testenv.RefsOnDisk(t, local)) == 0; {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("%v: small was never pulled", sig)
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
		cmd.Process.Signal(sig)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("%v: the pull did not stop", sig)
		}
		if code := cmd.ProcessState.ExitCode(); code != want || !strings.Contains(stdout.String(), "interrupted") ||
			!strings.Contains(stdout.String(), "done") || !strings.Contains(stderr.String(), "pull interrupted") {
			t.Errorf("%v: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", sig, code, want, stdout.String(), stderr.String())
		}
	}
}
