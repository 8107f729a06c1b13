package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Missing skips the test, or fails it under CI=true.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("required test dependency missing under CI=true: %s", msg)
	}
	t.Skipf("skipping: %s (install it, or run scripts/test)", msg)
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// RepoRoot is the directory holding bst-cache's go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(data, []byte("module github.com/bst-cache/bst-cache\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("cannot find the bst-cache repository root")
		}
		dir = parent
	}
}

// Server is a server process started for a test.
type Server struct {
	Addr string // 127.0.0.1:port
	Dir  string // its storage directory
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

// URL is the server's plaintext URL for a cache config.
func (s *Server) URL() string { return "http://" + s.Addr }

// Log is what the server printed so far.
func (s *Server) Log() string { return s.log.String() }

// Stop stops the server by its PID: SIGTERM, then SIGKILL after a grace
// period. Safe to call more than once.
func (s *Server) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Signal sends sig to the server's PID.
func (s *Server) Signal(sig os.Signal) error { return s.cmd.Process.Signal(sig) }

// Wait waits (at most timeout) for the server to exit and returns its exit
// code, or -1 if it did not exit in time.
func (s *Server) Wait(timeout time.Duration) int {
	select {
	case <-s.done:
		return s.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		return -1
	}
}

// Kill stops the server at once with SIGKILL.
func (s *Server) Kill() {
	_ = s.cmd.Process.Kill()
	<-s.done
}

// start runs cmd and waits until a gRPC GetCapabilities at addr answers.
func start(t testing.TB, name string, cmd *exec.Cmd, addr string, ready func(context.Context) error) *Server {
	t.Helper()
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	// The server dies with the test process, even one that panics (a
	// test timing out) before its cleanups stop the server by PID.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	s := &Server{Addr: addr, cmd: cmd, log: log, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(s.done) }()
	t.Cleanup(s.Stop)

	if ready == nil {
		ready = func(ctx context.Context) error { return grpcReady(ctx, addr) }
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := ready(ctx)
		cancel()
		if err == nil {
			return s
		}
		select {
		case <-s.done:
			t.Fatalf("%s exited before it was ready: %s", name, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready at %s after 60s: %v\n%s", name, addr, err, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tcpReady only connects: for servers a plaintext gRPC call cannot reach
// (TLS, tokens).
func tcpReady(addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
}

// grpcReady calls GetCapabilities over plaintext.
func grpcReady(ctx context.Context, addr string) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	_, err = repb.NewCapabilitiesClient(cc).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}, grpc.WaitForReady(true))
	return err
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// run runs a command and returns its combined output, failing the test on error.
func run(t testing.TB, dir string, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ReplaceFile gives path a new content by a rename over it, as a secret
// manager rotating a file does. It may be called from any goroutine (it
// reports with t.Error).
func ReplaceFile(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Error(err)
		return
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Error(err)
	}
}

// WriteFiles writes files (a relative path to its content) under a new
// directory and returns it.
func WriteFiles(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
