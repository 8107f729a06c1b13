package commands_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

func TestServeFlagErrors(t *testing.T) {
	certs := testenv.NewCerts(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--port", "1", "--listen", "127.0.0.1:2"}, 2, "--listen or --port"},
		{[]string{"--port", "70000"}, 2, "not a port"},
		{[]string{"--quota", "lots"}, 2, "--quota"},
		{[]string{"--quota", "0"}, 2, "--quota"},
		{[]string{"--server-key", certs.ServerKey}, 2, "go together"},
		{[]string{"--client-certs", certs.CA}, 2, "needs --server-key"},
		{[]string{"--server-key", certs.ServerKey, "--server-cert", filepath.Join(dir, "absent.pem")}, 1, "absent.pem"},
		{[]string{"--access-token", filepath.Join(dir, "no-token")}, 1, "no-token"},
		{[]string{"--access-log", filepath.Join(dir, "no-dir", "access.log")}, 1, "access log"},
		{[]string{"--max-message-bytes", "1000"}, 1, "too small"},
		{[]string{"--listen", "256.0.0.1:1"}, 1, "listening on 256.0.0.1:1"},
		{[]string{dir, "extra"}, 2, "at most one DIR"},
	} {
		_, stderr, code := runCLI(t, "", append([]string{"serve"}, tc.args...)...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("serve %v: exit %d, %q; want exit %d mentioning %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

// SIGTERM: serve stops accepting, lets a call in flight finish, exits 0.
func TestServeGracefulStop(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true, Args: []string{"--grace", "20s"}})
	cc, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	data := []byte(strings.Repeat("in flight ", 100000))
	d := digest.NewFromBlob(data)
	name := "uploads/4a7e9a54-9f0e-4b43-8d0a-0d3c1f8f0b11/blobs/" + d.Hash + "/" + strconv.FormatInt(d.Size, 10)
	stream, err := bsgrpc.NewByteStreamClient(cc).Write(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	half := len(data) / 2
	if err := stream.Send(&bsgrpc.WriteRequest{ResourceName: name, Data: data[:half]}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the call is now in flight on the server
	if err := srv.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// New connections are refused once the server is stopping.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", srv.Addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("serve still accepts connections 10s after SIGTERM")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := stream.Send(&bsgrpc.WriteRequest{WriteOffset: int64(half), Data: data[half:], FinishWrite: true}); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.CloseAndRecv(); err != nil || resp.GetCommittedSize() != d.Size {
		t.Fatalf("the in-flight upload: %v, %v", resp, err)
	}
	if code := srv.Wait(20 * time.Second); code != 0 {
		t.Fatalf("serve exited %d after SIGTERM; want 0\n%s", code, srv.Log())
	}
	layout := "cas/cas/objects"
	if _, err := os.Stat(filepath.Join(srv.Dir, "cas", "objects")); err == nil {
		layout = "cas/objects"
	}
	if _, err := os.Stat(filepath.Join(srv.Dir, layout, d.Hash[:2], d.Hash[2:])); err != nil {
		t.Errorf("the upload finished during the grace period is not stored: %v", err)
	}
	if log := srv.Log(); !strings.Contains(log, "stopping") || !strings.Contains(log, "ByteStream/Write OK") {
		t.Errorf("serve's log does not show the stop and the call:\n%s", log)
	}
}
