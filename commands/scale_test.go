package commands_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// lineCounter counts the lines written to it.
type lineCounter struct{ lines int }

func (c *lineCounter) Write(p []byte) (int, error) {
	c.lines += bytes.Count(p, []byte("\n"))
	return len(p), nil
}

// A pull's memory does not grow with the refs it is given: 200,000 refs
// from stdin cost little more than 20,000, in text and in --json. Before,
// every ref, its copies and its result were held to the end (about 1 KB a
// ref: 945 MiB for a million); now a batch is, and a 16-byte hash of each
// ref for the duplicates. The only cache (a real serve) is a storage cache:
// no index to ask, so each ref fails at once, without a round trip, and
// what is measured is what the command keeps for each ref. Every ref is
// reported once, duplicates across batches dropped.
func TestPullMemoryDoesNotGrowWithRefs(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{})
	cfg := writeConfig(t, fmt.Sprintf("format = \"bst1\"\n[[cache]]\nname = \"blobs\"\ntype = \"storage\"\nurl = %q\n", srv.URL()))
	bin := testenv.BstCacheBinary(t)
	// maxRSS pulls n refs, and the first 1,000 again, and returns the
	// pull's peak memory in bytes.
	maxRSS := func(n int, json bool) int64 {
		t.Helper()
		var in bytes.Buffer
		for i := range n {
			fmt.Fprintf(&in, "bench/missing%07d/%064x\n", i, i)
		}
		in.Write(in.Bytes()[:1000*(len("bench/missing0000000/")+65)])
		args := []string{"--config", cfg, "--local", t.TempDir(), "pull", "-"}
		if json {
			args = append([]string{"--json"}, args...)
		}
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "BST_CACHE_CONFIG=", "HOME="+t.TempDir())
		var out lineCounter
		var stderr bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr = &in, &out, &stderr
		hwm, _ := peakRSS(t, cmd)
		if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(stderr.String(), fmt.Sprintf("pull: %d refs failed", n)) {
			t.Fatalf("pull of %d refs: exit %d, want 1 with each failed once\n%s", n, code, stderr.String())
		}
		// A line a result, or in the JSON document a line a field.
		if lines := out.lines; !json && lines != n || json && lines < 5*n {
			t.Fatalf("pull of %d refs (json %v): %d lines on stdout", n, json, lines)
		}
		return hwm
	}
	for _, json := range []bool{false, true} {
		small, big := maxRSS(20_000, json), maxRSS(200_000, json)
		per := (big - small) / 180_000
		t.Logf("json %v: max RSS %d MiB for 20,000 refs, %d MiB for 200,000: %d bytes a ref more", json, small>>20, big>>20, per)
		if per > 300 {
			t.Errorf("json %v: a pull's memory grows by %d bytes a ref (%d MiB for 20,000 refs, %d MiB for 200,000); want at most 300", json, per, small>>20, big>>20)
		}
	}
}

// peakRSS runs cmd and returns its peak memory in bytes, and how it
// ended.
func peakRSS(t *testing.T, cmd *exec.Cmd) (int64, error) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	peak := make(chan int64)
	go func() { peak <- highWater(cmd.Process.Pid) }()
	err := cmd.Wait()
	return <-peak, err
}

// refWriter returns a function that writes refs in the bst1 store dir up
// to n, keys an element (BuildStream keeps two: its strong and weak keys),
// each naming the one (empty) Directory stored.
func refWriter(t *testing.T, dir string, keys int) func(n int) {
	t.Helper()
	s, err := cache.Open(dir, cache.KindBst1Artifact)
	if err != nil {
		t.Fatal(err)
	}
	root, err := s.Add(nil)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := proto.Marshal(root.ToProto())
	written := 0
	return func(n int) {
		for ; written < n; written++ {
			ref := fmt.Sprintf("proj/el%06d/%064x", written/keys, written)
			p, err := s.RefPath(cache.KindBst1Artifact, ref)
			if err != nil {
				t.Fatal(err)
			}
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// highWater is the peak memory (VmHWM) of process pid, read every few
// milliseconds until it exits. Not its rusage: Linux carries the peak of
// the process that started it (this test, with the refs it wrote) across
// the exec.
func highWater(pid int) int64 {
	var peak int64
	for {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return peak
		}
		_, rest, ok := strings.Cut(string(status), "VmHWM:")
		if !ok {
			return peak // exited: a zombie has no memory
		}
		kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
		peak = max(peak, kb<<10)
		time.Sleep(5 * time.Millisecond)
	}
}

// ls --json and du --json stream their entries into the document, and
// gc --json the refs it removes: 60,000 refs cost little more than 10,000
// (before, every entry was gathered, then the whole document encoded at
// once: over 1 KB a ref, 359 MiB for 200,000 with ls and 186 MB with du).
// Text listings already streamed.
func TestJSONListingsMemoryDoesNotGrowWithRefs(t *testing.T) {
	bin := testenv.BstCacheBinary(t)
	dir := t.TempDir()
	refs := refWriter(t, dir, 2)
	maxRSS := func(command string, n int) int64 {
		t.Helper()
		refs(n)
		args := []string{command}
		if command == "gc" {
			args = append(args, "--dry-run", "--older-than", "1ns")
		}
		cmd := exec.Command(bin, append([]string{"--json", "--format", "bst1", "--local", dir}, args...)...)
		cmd.Env = append(os.Environ(), "BST_CACHE_CONFIG=/dev/null", "HOME="+t.TempDir())
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		peak, err := peakRSS(t, cmd)
		if err != nil {
			t.Fatalf("%s --json of %d refs: %v\n%s", command, n, err, stderr.String())
		}
		var entries []struct{ Ref, Digest, Error string }
		var doc struct {
			Result json.RawMessage
			Counts map[string]int
		}
		err = json.Unmarshal(out.Bytes(), &doc)
		switch {
		case err == nil && command == "gc":
			var gc struct {
				Refs []string `json:"refs_removed"`
			}
			if err = json.Unmarshal(doc.Result, &gc); err == nil {
				doc.Counts["refs"] = doc.Counts["refs_removed"]
				for _, ref := range gc.Refs {
					entries = append(entries, struct{ Ref, Digest, Error string }{Ref: ref})
				}
				doc.Result = nil
			}
		case err == nil && command == "du":
			var du struct {
				Refs  json.RawMessage
				Store struct{ Objects int }
			}
			if err = json.Unmarshal(doc.Result, &du); err == nil && du.Store.Objects != 1 {
				err = fmt.Errorf("the store's objects: %d, want 1", du.Store.Objects)
			}
			doc.Result = du.Refs
		}
		if err == nil && doc.Result != nil {
			err = json.Unmarshal(doc.Result, &entries)
		}
		if err != nil || len(entries) != n || doc.Counts["refs"] != n || entries[0].Ref == "" || entries[n-1].Error != "" {
			t.Fatalf("%s --json of %d refs: %d entries, counts %v, %v", command, n, len(entries), doc.Counts, err)
		}
		return peak
	}
	commands := []string{"ls", "du", "gc"}
	small := map[string]int64{}
	for _, command := range commands {
		small[command] = maxRSS(command, 10_000)
	}
	for _, command := range commands {
		small, big := small[command], maxRSS(command, 60_000)
		per := (big - small) / 50_000
		t.Logf("%s: max RSS %d MiB for 10,000 refs, %d MiB for 60,000: %d bytes a ref more", command, small>>20, big>>20, per)
		if per > 300 {
			t.Errorf("%s --json's memory grows by %d bytes a ref (%d MiB for 10,000 refs, %d MiB for 60,000); want at most 300", command, per, small>>20, big>>20)
		}
	}
}

// sync with a prefix or a glob, which and rm (with a glob) hold a batch of
// refs, not every ref listed or matched: 60,000 refs cost little more than
// 10,000. Before, which held every location and its row (931 bytes a ref
// more), and rm every ref matched with what it knew of it and every result
// (1,141). The refs are BuildStream 1's, in a store that a real serve
// lists for sync's --from (a dry run to a second serve); which asks a
// storage cache only (no index: no round trip a ref), and rm is a dry run
// on the same store. sync held its listing (names, digests and times) only
// while listing, below what copying 60,000 refs takes (about 130 bytes a
// ref more before and after): it is here so that it stays bounded.
func TestRefCommandsMemoryDoesNotGrowWithRefs(t *testing.T) {
	bin := testenv.BstCacheBinary(t)
	dir := t.TempDir()
	refs := refWriter(t, dir, 2)
	src := testenv.StartServe(t, testenv.ServeOptions{Dir: dir})
	dst := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	blobs := testenv.StartServe(t, testenv.ServeOptions{})
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("src", src.URL(), false)+cacheTOML("dst", dst.URL(), true)+
		fmt.Sprintf("[[cache]]\nname = \"blobs\"\ntype = \"storage\"\nurl = %q\n", blobs.URL()))
	runs := []struct {
		name string
		args []string
		code int
		// header: lines on stdout beside one a ref.
		header int
	}{
		{"sync GLOB", []string{"sync", "--dry-run", "--from", "src", "--to", "dst", "proj/el*"}, 0, 0},
		{"which GLOB", []string{"which", "--cache", "blobs", "proj/*"}, 3, 1},
		{"rm --dry-run GLOB", []string{"rm", "--dry-run", "proj/*"}, 0, 0},
	}
	maxRSS := func(i, n int) int64 {
		t.Helper()
		refs(n)
		cmd := exec.Command(bin, append([]string{"--config", cfg, "--local", dir}, runs[i].args...)...)
		cmd.Env = append(os.Environ(), "BST_CACHE_CONFIG=", "HOME="+t.TempDir())
		var out lineCounter
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		start := time.Now()
		peak, _ := peakRSS(t, cmd)
		if code := cmd.ProcessState.ExitCode(); code != runs[i].code || out.lines != n+runs[i].header {
			t.Fatalf("%s of %d refs: exit %d (want %d), %d lines on stdout\n%s", runs[i].name, n, code, runs[i].code, out.lines, stderr.String())
		}
		t.Logf("%s of %d refs: %v", runs[i].name, n, time.Since(start))
		return peak
	}
	small := make([]int64, len(runs))
	for i := range runs {
		small[i] = maxRSS(i, 10_000)
	}
	for i, r := range runs {
		big := maxRSS(i, 60_000)
		per := (big - small[i]) / 50_000
		t.Logf("%s: max RSS %d MiB for 10,000 refs, %d MiB for 60,000: %d bytes a ref more", r.name, small[i]>>20, big>>20, per)
		if per > 300 {
			t.Errorf("%s: memory grows by %d bytes a ref (%d MiB for 10,000 refs, %d MiB for 60,000); want at most 300", r.name, per, small[i]>>20, big>>20)
		}
	}
}

// ls (text and --json) of an element with many keys holds a part of them
// at a time, not all: 120,000 keys cost little more than 30,000. Before,
// the walk read each directory whole, the refs' contents too with --json
// (about 200 bytes a key more in text, 730 with --json; now 40-80).
func TestLsOfAnElementWithManyKeysMemory(t *testing.T) {
	bin := testenv.BstCacheBinary(t)
	dir := t.TempDir()
	refs := refWriter(t, dir, 1<<30)
	maxRSS := func(n int, json bool) int64 {
		t.Helper()
		refs(n)
		args := []string{"--format", "bst1", "--local", dir, "ls"}
		if json {
			args = append([]string{"--json"}, args...)
		}
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "BST_CACHE_CONFIG=/dev/null", "HOME="+t.TempDir())
		var out lineCounter
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		peak, err := peakRSS(t, cmd)
		// A line a ref, or in the JSON document a line a field.
		if err != nil || !json && out.lines != n || json && out.lines < 4*n {
			t.Fatalf("ls (json %v) of %d refs: %v, %d lines on stdout\n%s", json, n, err, out.lines, stderr.String())
		}
		return peak
	}
	small := map[bool]int64{false: maxRSS(30_000, false), true: maxRSS(30_000, true)}
	for _, json := range []bool{false, true} {
		big := maxRSS(120_000, json)
		per := (big - small[json]) / 90_000
		t.Logf("json %v: max RSS %d MiB for 30,000 keys, %d MiB for 120,000: %d bytes a key more", json, small[json]>>20, big>>20, per)
		if per > 130 {
			t.Errorf("ls (json %v) of an element's keys grows by %d bytes a key (%d MiB for 30,000, %d MiB for 120,000); want at most 130", json, per, small[json]>>20, big>>20)
		}
	}
}
