package testenv

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// startEnv and startCacheDir are the environment the test process started
// with: tests point HOME and XDG_CACHE_HOME at temporary directories, and a
// build there would land in a directory removed after the test, from a cold
// Go build cache and module cache.
var (
	startEnv         = os.Environ()
	startCacheDir, _ = os.UserCacheDir()
)

// goBinary is a Go program built at most once per test process.
type goBinary struct {
	once sync.Once
	path string
	err  string
}

// get returns $envVar when set, else builds pkg from the module in dir
// (relative to the repository root) into the user's cache directory.
func (b *goBinary) get(t testing.TB, name, envVar, dir, pkg string) string {
	t.Helper()
	b.once.Do(func() {
		if p := os.Getenv(envVar); p != "" {
			b.path = p
			return
		}
		cacheDir := startCacheDir
		if cacheDir == "" {
			cacheDir = os.TempDir()
		}
		// One directory per checkout: test processes of two worktrees
		// would otherwise replace each other's binaries.
		root := RepoRoot(t)
		out := filepath.Join(cacheDir, "bst-cache-test-tools", fmt.Sprintf("%x", sha256.Sum256([]byte(root)))[:12])
		if err := os.MkdirAll(out, 0o755); err != nil {
			b.err = err.Error()
			return
		}
		// Build to a temporary name and rename, so concurrent test binaries
		// never run a half-written file; go build's cache makes repeats cheap.
		tmp, err := os.CreateTemp(out, name+"-*")
		if err != nil {
			b.err = err.Error()
			return
		}
		tmp.Close()
		cmd := exec.Command("go", "build", "-o", tmp.Name(), pkg)
		cmd.Dir = filepath.Join(root, dir)
		cmd.Env = startEnv
		if msg, err := cmd.CombinedOutput(); err != nil {
			os.Remove(tmp.Name())
			b.err = "building " + name + ": " + err.Error() + "\n" + string(msg)
			return
		}
		b.path = filepath.Join(out, name)
		if err := os.Rename(tmp.Name(), b.path); err != nil {
			b.err = err.Error()
		}
	})
	if b.err != "" {
		Missing(t, "%s: %s", name, b.err)
	}
	return b.path
}
