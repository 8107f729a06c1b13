package testenv

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

var bstCache goBinary

// BstCacheBinary returns the bst-cache binary: $BST_CACHE_BIN (scripts/test
// sets it), or one built once from this repository.
func BstCacheBinary(t testing.TB) string {
	t.Helper()
	return bstCache.get(t, "bst-cache", "BST_CACHE_BIN", ".", ".")
}

// ServeOptions configures StartServe.
type ServeOptions struct {
	Push bool
	// Dir is the store; a fresh temporary directory when empty.
	Dir string
	// TLS: PEM file paths, as for StartArtifactServer.
	ServerKey, ServerCert, ClientCerts string
	// Args are more flags for serve (before DIR).
	Args []string
	// Env is added to the server's environment.
	Env []string
	// Port is the loopback port to listen on; a free one when zero.
	Port int
}

// StartServe starts `bst-cache serve` on a free loopback port.
func StartServe(t testing.TB, o ServeOptions) *Server {
	t.Helper()
	if o.Dir == "" {
		o.Dir = filepath.Join(t.TempDir(), "repo")
	}
	port := o.Port
	if port == 0 {
		port = FreePort(t)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	args := append([]string{"-v", "serve", "--listen", addr}, serverFlags(o.Push, o.ServerKey, o.ServerCert, o.ClientCerts)...)
	args = append(append(args, o.Args...), o.Dir)
	cmd := exec.Command(BstCacheBinary(t), args...)
	// No user or project configuration leaks in.
	cmd.Env = append(os.Environ(), "BST_CACHE_CONFIG=/dev/null", "HOME="+t.TempDir())
	cmd.Env = append(cmd.Env, o.Env...)
	var ready func(context.Context) error
	if o.ServerKey != "" || hasArg(o.Args, "--access-token") {
		ready = tcpReady(addr)
	}
	s := start(t, "bst-cache serve", cmd, addr, ready)
	s.Dir = o.Dir
	return s
}

func hasArg(args []string, a string) bool {
	for _, x := range args {
		if x == a {
			return true
		}
	}
	return false
}
