package commands_test

import (
	"bufio"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// A copy killed with SIGKILL mid-transfer, then re-run, completes and moves
// only the rest; the target never names a ref whose blobs are not all there.
func TestCopyKilledAndRerun(t *testing.T) {
	src := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	dst := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	// Eight bst1 artifacts of 8 x 1 MiB random files each, pushed to src.
	origin := t.TempDir()
	s, err := cache.Open(origin, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	var refs []string
	for a := 0; a < 8; a++ {
		dir := &repb.Directory{}
		for f := 0; f < 8; f++ {
			data := make([]byte, 1<<20)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			d, err := s.Add(data)
			if err != nil {
				t.Fatal(err)
			}
			dir.Files = append(dir.Files, &repb.FileNode{Name: string(rune('a' + f)), Digest: d.ToProto()})
		}
		data, _ := proto.Marshal(dir)
		root, _ := s.Add(data)
		ref := "big/art" + string(rune('0'+a)) + "/k"
		rootData, _ := proto.Marshal(root.ToProto())
		if err := s.SetRef(cache.KindArtifact, ref, rootData); err != nil {
			t.Fatal(err)
		}
		refs = append(refs, ref)
	}
	cfg := writeConfig(t, "format = \"bst1\"\njobs = 1\n"+cacheTOML("src", src.URL(), true)+cacheTOML("dst", dst.URL(), true))
	if _, stderr, code := runCLI(t, "", append([]string{"--config", cfg, "--local", origin, "push", "--cache", "src"}, refs...)...); code != 0 {
		t.Fatalf("seeding src: %d\n%s", code, stderr)
	}

	// Copy in a child process with -v, and kill it once it has moved some
	// but not all.
	stage := t.TempDir()
	cmd := exec.Command(testenv.BstCacheBinary(t), append([]string{"--config", cfg, "--local", stage, "-v", "--jobs", "1", "copy", "--from", "src", "--to", "dst"}, refs...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	objects := filepath.Join(stage, "cas", "objects")
	deadline := time.Now().Add(60 * time.Second)
	for countFiles(objects) < 20 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the copy did not start moving blobs within 60s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Kill()
	go bufio.NewScanner(stderr).Scan()
	cmd.Wait()
	staged := countFiles(objects)
	if staged >= 8*9 {
		t.Skipf("the copy finished before it could be killed (%d objects staged)", staged)
	}
	checkRefsComplete(t, dst.Dir)

	stdout, stderrOut, code := runCLI(t, "", append([]string{"--config", cfg, "--local", stage, "--json", "copy", "--from", "src", "--to", "dst"}, refs...)...)
	if code != 0 {
		t.Fatalf("re-run: exit %d\n%s", code, stderrOut)
	}
	var rep pullReport
	if err := decodeDoc(stdout, &rep); err != nil {
		t.Fatal(err)
	}
	// The re-run pulled only what the killed run had not staged: 8 roots
	// and 64 files in all, minus what was already local (the empty blob
	// aside), and pushed the rest.
	if got := testenv.RefsOnDisk(t, dst.Dir); len(got) != len(refs) {
		t.Errorf("dst has %d refs after the re-run; want %d", len(got), len(refs))
	}
	checkRefsComplete(t, dst.Dir)
	// Refs the killed run finished (copy pushes each as soon as it is
	// local) are skipped; the rest are done.
	if rep.Counts["done"]+rep.Counts["skipped"] != len(refs) || rep.Counts["done"] == 0 {
		t.Errorf("re-run report: %+v\n%s", rep, stderrOut)
	}
	for _, r := range rep.Refs {
		if r.Status == "skipped" && r.Reason != "the target already has it" {
			t.Errorf("re-run skipped %s: %s", r.Ref, r.Reason)
		}
	}
	if pulled := rep.moved(); pulled >= 2*int64(8*9) {
		t.Errorf("the re-run moved %d blobs: it should not redo what was staged", pulled)
	}
}

func countFiles(dir string) int {
	n := 0
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

// checkRefsComplete fails when a server store names a ref whose closure is
// not all there.
func checkRefsComplete(t *testing.T, dir string) {
	t.Helper()
	layout, ok := cache.DetectLayout(dir)
	if !ok {
		return
	}
	st, err := cache.Open(dir, layout)
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range testenv.RefsOnDisk(t, dir) {
		data, _ := st.GetRef(cache.KindBst1Artifact, ref)
		var d repb.Digest
		if err := proto.Unmarshal(data, &d); err != nil {
			t.Fatal(err)
		}
		if _, missing, err := st.Closure(digest.NewFromProtoUnvalidated(&d)); err != nil || len(missing) > 0 {
			t.Errorf("target names %s with %d blobs missing (%v)", ref, len(missing), err)
		}
	}
}
