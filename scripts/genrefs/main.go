// Command genrefs writes N small BuildStream 1 artifacts into a local store
// in BuildStream 1's layout, for benchmarks that need many refs (a no-op
// copy of 1,000 refs in scripts/bench-links): bst would take minutes to
// build as many elements.
//
//	genrefs -n 1000 -project bench DIR
//	genrefs -n 40 -files 60 -size 100000 DIR   # 40 artifacts of 6 MB
//	genrefs -n 1 -first 7000 -files 3 -size 1048576 DIR   # artifact 7000 alone
//	genrefs -n 40 -files 60 -mixed DIR         # 40 artifacts as a build's
//	genrefs -n 1000000 -j 2 DIR                # a million, two writers
//
// Each artifact is files/ (-files files of -size bytes of its own random
// content; by default three small ones of text; with -mixed, sizes as a
// build's outputs: three of 1-2 MiB, the rest of 512 bytes to 64 KiB), meta/
// with keys.yaml (strong and weak key) and logs/, stored under its strong
// and its weak ref, as bst stores one. Artifact i (numbered from -first)
// is the same whatever else a run makes: runs with -first apart make
// different artifacts (scripts/bench-load's pushers each make fresh ones). It prints the strong refs, one per
// line, in order, each once it is written.
//
// Refs are written -batch artifacts at a time with one sync of the file
// system (cache.Store.WriteRefs), after every object they name: a store
// cut short holds no ref whose objects are missing. With -j N, N writers
// take batches in turn; the store and the output are the same whatever
// -j and -batch are.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
)

func main() {
	n := flag.Int("n", 1000, "how many artifacts")
	project := flag.String("project", "bench", "the project name in the refs")
	files := flag.Int("files", 0, "files per artifact, of -size random bytes each (0: three small text files)")
	size := flag.Int("size", 65536, "bytes per file with -files")
	first := flag.Int("first", 0, "the number of the first artifact")
	mixed := flag.Bool("mixed", false, "with -files: sizes as a build's outputs (three of 1-2 MiB, the rest 512 bytes to 64 KiB) instead of -size")
	batch := flag.Int("batch", 1000, "artifacts whose refs share one sync of the file system")
	workers := flag.Int("j", 1, "writers, each taking batches in turn")
	flag.Parse()
	if *mixed {
		*size = 0
	}
	if flag.NArg() != 1 || *n < 1 || *n > 1_000_000 || *first < 0 || *batch < 1 || *workers < 1 || *workers > 64 {
		fmt.Fprintln(os.Stderr, "usage: genrefs [-n N] [-first I] [-project NAME] [-files N [-size BYTES | -mixed]] [-batch B] [-j N] DIR")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *project, *first, *n, *files, *size, *batch, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "genrefs:", err)
		os.Exit(1)
	}
}

// run writes artifacts first..first+n-1 in batches of batch, workers
// at a time, and prints each batch's strong refs once they are written,
// in order.
func run(dir, project string, first, n, files, size, batch, workers int) error {
	s, err := cache.Open(dir, cache.KindBst1Artifact)
	if err != nil {
		return err
	}
	batches := (n + batch - 1) / batch
	// done[b] carries batch b's strong refs, or its error, once written;
	// worker w writes batches w, w+workers, ... until one fails.
	done := make([]chan batchResult, batches)
	for b := range done {
		done[b] = make(chan batchResult, 1)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range min(workers, batches) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := w; b < batches; b += workers {
				select {
				case <-stop:
					return
				default:
				}
				from := first + b*batch
				refs, err := writeBatch(s, project, from, min(batch, first+n-from), files, size)
				done[b] <- batchResult{refs, err}
			}
		}()
	}
	defer wg.Wait()
	defer close(stop)
	out := bufio.NewWriter(os.Stdout)
	for _, c := range done {
		r := <-c
		if r.err != nil {
			return errors.Join(r.err, out.Flush())
		}
		for _, ref := range r.refs {
			out.WriteString(ref + "\n")
		}
		if err := out.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// batchResult is what a batch wrote: its strong refs, or why it failed.
type batchResult struct {
	refs []string
	err  error
}

// writeBatch writes artifacts from..from+count-1 and then their refs,
// with one sync of the file system, and returns their strong refs.
func writeBatch(s *cache.Store, project string, from, count, files, size int) ([]string, error) {
	var writes []cache.RefWrite
	var strong []string
	for i := from; i < from+count; i++ {
		w, err := artifact(s, project, i, contents(i, files, size))
		if err != nil {
			return nil, err
		}
		writes = append(writes, w)
		strong = append(strong, w.Refs[0])
	}
	for _, err := range s.WriteRefs(writes) {
		if err != nil {
			return nil, err
		}
	}
	return strong, nil
}

// key is a cache key made from a seed: 64 hex digits, as bst's are.
func key(parts ...any) string {
	h := sha256.Sum256([]byte(fmt.Sprint(parts...)))
	return hex.EncodeToString(h[:])
}

// contents are the files of artifact i: three small ones of text, or
// files of size random bytes (size 0: of mixed sizes).
func contents(i, files, size int) [][]byte {
	var out [][]byte
	if files == 0 {
		for j, size := range []int{200, 1500, 6000} {
			content := make([]byte, 0, size)
			for len(content) < size {
				content = append(content, key(i, j, len(content))...)
			}
			out = append(out, content[:size])
		}
		return out
	}
	rng := rand.New(rand.NewPCG(uint64(i), 1))
	for j := range files {
		n := size
		switch {
		case size > 0:
		case j < 3:
			n = 1<<20 + rng.IntN(1<<20)
		default:
			n = 512 + rng.IntN(64<<10-512)
		}
		b := make([]byte, n)
		for k := range b {
			b[k] = byte(rng.Uint32())
		}
		out = append(out, b)
	}
	return out
}

// artifact stores artifact i's objects and returns the write of its
// strong and weak refs, strong first.
func artifact(s *cache.Store, project string, i int, contents [][]byte) (cache.RefWrite, error) {
	element := fmt.Sprintf("e%04d", i)
	strong, weak := key("strong", i), key("weak", i)
	dir := func(d *repb.Directory) (*repb.Digest, error) {
		data, err := proto.Marshal(d)
		if err != nil {
			return nil, err
		}
		dg, err := s.Add(data)
		return dg.ToProto(), err
	}
	file := func(name string, data []byte) (*repb.FileNode, error) {
		dg, err := s.Add(data)
		return &repb.FileNode{Name: name, Digest: dg.ToProto()}, err
	}
	var files, meta []*repb.FileNode
	for j, content := range contents {
		f, err := file(fmt.Sprintf("f%d", j), content)
		if err != nil {
			return cache.RefWrite{}, err
		}
		files = append(files, f)
	}
	k, err := file("keys.yaml", []byte(fmt.Sprintf("strong: %s\nweak: %s\n", strong, weak)))
	if err != nil {
		return cache.RefWrite{}, err
	}
	meta = append(meta, k)
	fd, err := dir(&repb.Directory{Files: files})
	if err != nil {
		return cache.RefWrite{}, err
	}
	md, err := dir(&repb.Directory{Files: meta})
	if err != nil {
		return cache.RefWrite{}, err
	}
	ld, err := dir(&repb.Directory{})
	if err != nil {
		return cache.RefWrite{}, err
	}
	root, err := dir(&repb.Directory{Directories: []*repb.DirectoryNode{
		{Name: "files", Digest: fd}, {Name: "logs", Digest: ld}, {Name: "meta", Digest: md},
	}})
	if err != nil {
		return cache.RefWrite{}, err
	}
	ptr, err := proto.Marshal(root)
	if err != nil {
		return cache.RefWrite{}, err
	}
	prefix := project + "/" + element + "/"
	return cache.RefWrite{Kind: cache.KindArtifact, Refs: []string{prefix + strong, prefix + weak}, Data: ptr}, nil
}
