package commands_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

type gcReport struct {
	Refs    []string `json:"refs_removed"`
	Objects int      `json:"objects_removed"`
	Freed   int64    `json:"bytes_freed"`
	Left    int64    `json:"bytes_left"`
}

// gc on BuildStream 1's own cache: after rm, the removed artifact's objects
// go and every remaining ref's closure stays complete (verify), and bst
// still checks out what remains; --max-size removes least recently used
// refs until the rest fit; --dry-run removes nothing.
func TestGC(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	p, builder, refs := builtProject(t, srv)
	local := builder.ArtifactDir()
	want := testenv.TreeSnapshot(t, builder.Checkout(t, p, "world.bst"))
	cfg := writeConfig(t, "format = \"bst1\"\n")
	gc := func(args ...string) gcReport {
		t.Helper()
		stdout, stderr, code := runCLI(t, "", append([]string{"--config", cfg, "--local", local, "--json", "gc", "--grace", "0s"}, args...)...)
		var rep gcReport
		if err := decodeDoc(stdout, &rep); err != nil || code != 0 {
			t.Fatalf("gc %v: exit %d, %v\n%s", args, code, err, stderr)
		}
		return rep
	}
	if rep := gc(); rep.Objects != 0 || len(rep.Refs) != 0 {
		t.Errorf("gc of a store where every object is reached removed %+v", rep)
	}
	hello := bigRef(t, refs)
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "rm", hello); code != 0 {
		t.Fatalf("rm: exit %d\n%s", code, stderr)
	}
	before := testenv.RefsOnDisk(t, local)
	if rep := gc("--dry-run"); rep.Objects == 0 || rep.Freed < 3<<20 {
		t.Errorf("gc --dry-run after rm: %+v; want hello's objects (the 3 MiB file) reported", rep)
	}
	rep := gc()
	if rep.Objects == 0 || rep.Freed < 3<<20 || len(rep.Refs) != 0 {
		t.Errorf("gc after rm: %+v; want hello's objects removed and no ref", rep)
	}
	if diff := cmp.Diff(before, testenv.RefsOnDisk(t, local)); diff != "" {
		t.Errorf("gc removed refs:\n%s", diff)
	}
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "verify"); code != 0 {
		t.Errorf("verify after gc: exit %d\n%s", code, stderr)
	}
	if diff := cmp.Diff(want, testenv.TreeSnapshot(t, builder.Checkout(t, p, "world.bst"))); diff != "" {
		t.Errorf("bst checkout after gc (-before +after):\n%s", diff)
	}
	if rep := gc("--max-size", "1B"); len(rep.Refs) == 0 || rep.Left > 1 {
		t.Errorf("gc --max-size 1B: %+v; want every ref and object gone", rep)
	}
}

// A gc running again and again while another bst-cache process pulls into
// the same store never breaks the pull: it waits for the transfer's lock,
// so nothing the pull wrote and has not named yet is removed.
func TestGCDuringPull(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	origin := t.TempDir()
	for i, name := range []string{"proj/a/key", "proj/b/key", "proj/c/key", "proj/d/key"} {
		bst1ArtifactSeeded(t, origin, name, 200, 32<<10, 2<<20, uint64(i))
	}
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", srv.URL(), true))
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", origin, "push", "proj/*"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, stderr)
	}
	local := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pull := exec.CommandContext(ctx, testenv.BstCacheBinary(t), "--config", cfg, "--local", local, "--jobs", "1", "pull", "proj/a/key", "proj/b/key", "proj/c/key", "proj/d/key")
	pull.Env = append(pull.Environ(), "BST_CACHE_CONFIG=", "HOME="+t.TempDir())
	if err := pull.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- pull.Wait() }()
	gcs := 0
	for running := true; running; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("the pull failed while gc ran: %v", err)
			}
			running = false
		default:
			if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "gc", "--grace", "0s"); code != 0 {
				t.Fatalf("gc: exit %d\n%s", code, stderr)
			}
			gcs++
		}
	}
	t.Logf("%d gc runs during the pull", gcs)
	if got := testenv.RefsOnDisk(t, local); len(got) != 4 {
		t.Errorf("refs after the pull: %v", got)
	}
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "verify"); code != 0 {
		t.Errorf("verify after a pull with gc running: exit %d\n%s", code, stderr)
	}
}

// gc --max-size right after a pull (every object fresh, the default grace)
// frees what the refs it removes reached: the grace period keeps only the
// fresh objects no ref reached when gc began, and gc says it kept them.
func TestGCFreesWhatRemovedRefsReached(t *testing.T) {
	local := t.TempDir()
	bst1Artifact(t, local, "demo/hello/"+strings.Repeat("1", 64), 5, 1000, 1<<20)
	bst1ArtifactSeeded(t, local, "demo/world/"+strings.Repeat("2", 64), 5, 1000, 1<<20, 2)
	s, err := cache.Open(local, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := s.Add([]byte("an object a lock-free writer is about to name in a ref"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, "format = \"bst1\"\n")
	stdout, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "--json", "gc", "--max-size", "1B")
	var rep struct {
		gcReport
		Kept      int   `json:"objects_kept_grace"`
		KeptBytes int64 `json:"bytes_kept_grace"`
	}
	if err := decodeDoc(stdout, &rep); err != nil || code != 0 {
		t.Fatalf("gc --max-size 1B: exit %d, %v\n%s", code, err, stderr)
	}
	if len(rep.Refs) != 2 || rep.Freed < 2<<20 || rep.Left != orphan.Size {
		t.Errorf("gc --max-size 1B of fresh objects: %+v; want both refs removed, their 2 MiB freed, only the unreached object left", rep)
	}
	if rep.Kept != 1 || rep.KeptBytes != orphan.Size {
		t.Errorf("gc reports %d objects (%d bytes) kept by grace; want the one no ref reached", rep.Kept, rep.KeptBytes)
	}
	if ok, err := s.Has(orphan); !ok {
		t.Errorf("the unreached fresh object is gone: %v", err)
	}
	_, stderr, code = runCLI(t, "", "--config", cfg, "--local", local, "gc")
	if code != 0 || !strings.Contains(stderr, "kept 1 object (") || !strings.Contains(stderr, "written within --grace") {
		t.Errorf("gc does not say what grace kept: exit %d\n%s", code, stderr)
	}
}
