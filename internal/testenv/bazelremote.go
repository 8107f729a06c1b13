package testenv

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
)

var (
	bazelRemoteOnce sync.Once
	bazelRemotePath string
	bazelRemoteErr  string
)

// BazelRemoteBinary returns a bazel-remote binary: $BST_CACHE_BAZEL_REMOTE,
// or one built once from the version pinned in scripts/tools/go.mod into the
// user's cache directory.
func BazelRemoteBinary(t testing.TB) string {
	t.Helper()
	bazelRemoteOnce.Do(func() {
		if p := os.Getenv("BST_CACHE_BAZEL_REMOTE"); p != "" {
			bazelRemotePath = p
			return
		}
		root := RepoRoot(t)
		cacheDir, err := os.UserCacheDir()
		if err != nil {
			cacheDir = os.TempDir()
		}
		dir := filepath.Join(cacheDir, "bst-cache-test-tools")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			bazelRemoteErr = err.Error()
			return
		}
		// Build to a temporary name and rename, so concurrent test binaries
		// never run a half-written file; go build's cache makes repeats cheap.
		tmp, err := os.CreateTemp(dir, "bazel-remote-*")
		if err != nil {
			bazelRemoteErr = err.Error()
			return
		}
		tmp.Close()
		cmd := exec.Command("go", "build", "-o", tmp.Name(), "github.com/buchgr/bazel-remote/v2")
		cmd.Dir = filepath.Join(root, "scripts", "tools")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.Remove(tmp.Name())
			bazelRemoteErr = "building bazel-remote: " + err.Error() + "\n" + string(out)
			return
		}
		bazelRemotePath = filepath.Join(dir, "bazel-remote")
		if err := os.Rename(tmp.Name(), bazelRemotePath); err != nil {
			bazelRemoteErr = err.Error()
		}
	})
	if bazelRemoteErr != "" {
		Missing(t, "bazel-remote: %s", bazelRemoteErr)
	}
	return bazelRemotePath
}

// StartBazelRemote starts bazel-remote with a fresh directory on free
// loopback ports; its gRPC address is Addr.
func StartBazelRemote(t testing.TB) *Server {
	t.Helper()
	bin := BazelRemoteBinary(t)
	dir := t.TempDir()
	grpcAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	cmd := exec.Command(bin, "--dir", dir, "--max_size", "1",
		"--grpc_address", grpcAddr, "--http_address", httpAddr)
	s := start(t, "bazel-remote", cmd, grpcAddr, nil)
	s.Dir = dir
	return s
}
