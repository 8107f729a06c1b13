package testenv

import (
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

var bazelRemote goBinary

// BazelRemoteBinary returns a bazel-remote binary: $BST_CACHE_BAZEL_REMOTE,
// or one built once from the version pinned in scripts/tools/go.mod.
func BazelRemoteBinary(t testing.TB) string {
	t.Helper()
	return bazelRemote.get(t, "bazel-remote", "BST_CACHE_BAZEL_REMOTE", filepath.Join("scripts", "tools"), "github.com/buchgr/bazel-remote/v2")
}

// StartBazelRemote starts bazel-remote with a fresh directory on free
// loopback ports, and any further flags; its gRPC address is Addr.
func StartBazelRemote(t testing.TB, flags ...string) *Server {
	t.Helper()
	bin := BazelRemoteBinary(t)
	dir := t.TempDir()
	grpcAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	cmd := exec.Command(bin, append([]string{"--dir", dir, "--max_size", "1",
		"--grpc_address", grpcAddr, "--http_address", httpAddr}, flags...)...)
	s := start(t, "bazel-remote", cmd, grpcAddr, nil)
	s.Dir = dir
	return s
}
