package cache

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// slowBlob is a deterministic 64 MiB blob, produced slowly enough that the
// writer can be killed in the middle.
type slowBlob struct {
	n, size int64
	started func()
}

func (b *slowBlob) Read(p []byte) (int, error) {
	if b.n >= b.size {
		return 0, io.EOF
	}
	if len(p) > 1<<20 {
		p = p[:1<<20]
	}
	if rest := b.size - b.n; int64(len(p)) > rest {
		p = p[:rest]
	}
	for i := range p {
		p[i] = byte((b.n + int64(i)) * 7)
	}
	b.n += int64(len(p))
	if b.n >= 8<<20 && b.started != nil {
		b.started()
		b.started = nil
		time.Sleep(time.Minute) // wait to be killed
	}
	return len(p), nil
}

func slowBlobDigest(size int64) digest.Digest {
	h := sha256.New()
	n, _ := io.Copy(h, &slowBlob{size: size})
	return digest.Digest{Hash: hex.EncodeToString(h.Sum(nil)), Size: n}
}

const crashBlobSize = 64 << 20

// TestHelperKilledWriter is not a test: TestKilledWriterLeavesNoPartialObject
// runs it in a child process, which it kills mid-write.
func TestHelperKilledWriter(t *testing.T) {
	dir := os.Getenv("BST_CACHE_CRASH_STORE")
	if dir == "" {
		t.Skip("helper process only")
	}
	s, err := Open(dir, KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := strconv.ParseInt(os.Getenv("BST_CACHE_CRASH_SIZE"), 10, 64)
	blob := &slowBlob{size: d, started: func() { fmt.Println("writing"); os.Stdout.Sync() }}
	_ = s.Put(slowBlobDigest(d), blob)
	_ = s.SetRef(KindArtifact, "p/e/k", []byte("never"))
}

func TestKilledWriterLeavesNoPartialObject(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperKilledWriter$", "-test.v")
	cmd.Env = append(os.Environ(), "BST_CACHE_CRASH_STORE="+dir, "BST_CACHE_CRASH_SIZE="+strconv.Itoa(crashBlobSize))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	started := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "writing" {
				started <- true
				return
			}
		}
		started <- false
	}()
	select {
	case ok := <-started:
		if !ok {
			t.Fatal("the writer exited before it started writing")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the writer did not start within 30s")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	s, err := Open(dir, KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	d := slowBlobDigest(crashBlobSize)
	if _, err := os.Stat(s.ObjectPath(d)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a killed writer left something under the object's final name: %v", err)
	}
	if _, err := s.GetRef(KindArtifact, "p/e/k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a killed writer left a ref: %v", err)
	}
	// With O_TMPFILE the partial data had no name and is gone; elsewhere
	// it is in one temporary file. A new writer stores the blob whole.
	if left := tmpEntries(t, s); len(left) > 1 {
		t.Errorf("want the partial write in at most one temporary file, found %v", left)
	}
	if err := s.Put(d, &slowBlob{size: crashBlobSize}); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(d); err != nil {
		t.Fatal(err)
	}
}
