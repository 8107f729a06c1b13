package commands_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/linksim"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// randomBlob is size bytes of deterministic random data from seed,
// generated as it is read: large blobs never sit in memory.
func randomBlob(seed uint64, size int64) io.Reader {
	var key [32]byte
	key[0] = byte(seed)
	return io.LimitReader(rand.NewChaCha8(key), size)
}

// largeArtifact writes a bst1 artifact whose files/ holds one file of
// size random bytes, streamed into the store, and returns that file's
// digest.
func largeArtifact(t *testing.T, dir, ref string, size int64, seed uint64) digest.Digest {
	t.Helper()
	s, err := cache.Open(dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, randomBlob(seed, size)); err != nil {
		t.Fatal(err)
	}
	big := digest.Digest{Hash: hex.EncodeToString(h.Sum(nil)), Size: size}
	if err := s.Put(big, randomBlob(seed, size)); err != nil {
		t.Fatal(err)
	}
	add := func(m proto.Message) *repb.Digest {
		t.Helper()
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		d, err := s.Add(data)
		if err != nil {
			t.Fatal(err)
		}
		return d.ToProto()
	}
	files := add(&repb.Directory{Files: []*repb.FileNode{{Name: "large", Digest: big.ToProto()}}})
	root := add(&repb.Directory{Directories: []*repb.DirectoryNode{{Name: "files", Digest: files}}})
	ptr, _ := proto.Marshal(root)
	if err := s.SetRef(cache.KindArtifact, ref, ptr); err != nil {
		t.Fatal(err)
	}
	return big
}

// A ByteStream write is bounded by its progress, not by request-timeout:
// a blob that takes four times the request timeout to cross a capped link
// is pushed, and pulled back. (A write under the request timeout failed
// every attempt, each from the start.)
func TestLargeUploadOutlastsRequestTimeout(t *testing.T) {
	const size = 12 << 20 // 12 s at 1 MiB/s
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	local := t.TempDir()
	big := largeArtifact(t, local, "proj/slow/key", size, 1)
	cfg := writeConfig(t, fmt.Sprintf("format = \"bst1\"\n[[cache]]\nname = \"serve\"\nurl = %q\npush = true\n[cache.connection]\nrequest-timeout = \"3s\"\nretry-limit = 2\n", srv.URL()))
	start := time.Now()
	rep, stderr, code := runJSON(t, "--config", cfg, "--local", local, "--bwlimit", "1MiB/s", "push", "proj/slow/key")
	t.Logf("push of %d MiB at 1 MiB/s with request-timeout 3s: exit %d in %s", size>>20, code, time.Since(start).Round(time.Second))
	if code != 0 || rep.Pushed.Bytes < size {
		t.Fatalf("push: exit %d, %d bytes pushed: %+v\n%s", code, rep.Pushed.Bytes, rep.Refs, stderr)
	}
	back := t.TempDir()
	rep, stderr, code = runJSON(t, "--config", cfg, "--local", back, "--bwlimit", "1MiB/s", "pull", "proj/slow/key")
	if code != 0 || rep.Pulled.Bytes < size {
		t.Fatalf("pull: exit %d, %d bytes pulled\n%s", code, rep.Pulled.Bytes, stderr)
	}
	s, err := cache.Open(back, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(big); err != nil {
		t.Fatal(err)
	}
}

// A push or pull of a large blob interrupted by Ctrl-C half way resumes
// in the next run from what already crossed: the re-run moves at most
// 55% of the blob over the link (serve keeps the upload parked and says
// how much it holds; the pull kept its partial download), and every byte
// is checked against the digest. Nothing partial is left under a final
// name.
func TestInterruptedLargeTransferResumes(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 300 MB each way")
	}
	const size = 300 << 20
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	link, addr := testenv.StartLink(t, srv.Addr, linksim.Profile{})
	origin := t.TempDir()
	big := largeArtifact(t, origin, "proj/big/key", size, 2)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", "http://"+addr, true))

	moved := func(up bool) int64 {
		u, d := link.Bytes()
		if up {
			return u
		}
		return d
	}
	// interrupted runs the command slowed by --bwlimit and sends SIGINT
	// once half the blob crossed the link.
	interrupted := func(what string, up bool, local string) {
		t.Helper()
		before := moved(up)
		cmd := exec.Command(testenv.BstCacheBinary(t), "--config", cfg, "--local", local, "--bwlimit", "40MiB/s", what, "proj/big/key")
		cmd.Env = append(os.Environ(), "BST_CACHE_CONFIG=", "HOME="+t.TempDir())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		for deadline := time.Now().Add(60 * time.Second); moved(up)-before < size/2; time.Sleep(20 * time.Millisecond) {
			select {
			case <-done:
				t.Fatalf("%s ended before half the blob crossed (%d bytes): %s", what, moved(up)-before, stderr.String())
			default:
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("%s: half the blob never crossed", what)
			}
		}
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("%s did not stop on SIGINT", what)
		}
		if code := cmd.ProcessState.ExitCode(); code != 130 {
			t.Fatalf("interrupted %s: exit %d, want 130\n%s", what, code, stderr.String())
		}
		t.Logf("%s interrupted after %.1f%% of the blob crossed", what, 100*float64(moved(up)-before)/size)
	}
	// resumed runs the command again, in full, and returns the share of
	// the blob that crossed the link.
	resumed := func(what string, up bool, local string) float64 {
		t.Helper()
		before := moved(up)
		cmd := exec.Command(testenv.BstCacheBinary(t), "--json", "--config", cfg, "--local", local, what, "proj/big/key")
		cmd.Env = append(os.Environ(), "BST_CACHE_CONFIG=", "HOME="+t.TempDir())
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s again: %v\n%s", what, err, stderr.String())
		}
		var rep pullReport
		if err := decodeDoc(stdout.String(), &rep); err != nil || statuses(rep) == "" || strings.Contains(statuses(rep), "failed") {
			t.Fatalf("%s again: %v %s\n%s", what, err, stdout.String(), stderr.String())
		}
		share := float64(moved(up)-before) / size
		t.Logf("%s again moved %.1f%% of the blob (%s)", what, 100*share, statuses(rep))
		return share
	}

	interrupted("push", true, origin)
	if got := resumed("push", true, origin); got > 0.55 {
		t.Errorf("the push after an interrupted one moved %.1f%% of the blob; want at most 55%%", 100*got)
	}
	served, err := cache.Open(srv.Dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	if err := served.Verify(big); err != nil {
		t.Fatalf("serve after the resumed push: %v", err)
	}

	local := t.TempDir()
	interrupted("pull", false, local)
	s, err := cache.Open(local, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.Has(big); ok {
		t.Fatal("the interrupted pull left the blob under its final name")
	}
	if kept, _ := filepath.Glob(filepath.Join(local, "tmp", "partial-*")); len(kept) != 1 {
		t.Fatalf("the interrupted pull kept %v in tmp, want one partial download", kept)
	}
	if got := resumed("pull", false, local); got > 0.55 {
		t.Errorf("the pull after an interrupted one moved %.1f%% of the blob; want at most 55%%", 100*got)
	}
	if err := s.Verify(big); err != nil {
		t.Fatalf("the resumed pull: %v", err)
	}
	if kept, _ := filepath.Glob(filepath.Join(local, "tmp", "partial-*")); len(kept) != 0 {
		t.Errorf("the resumed pull left %v behind", kept)
	}
}
