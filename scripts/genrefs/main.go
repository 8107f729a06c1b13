// Command genrefs writes N small BuildStream 1 artifacts into a local store
// in BuildStream 1's layout, for benchmarks that need many refs (a no-op
// copy of 1,000 refs in scripts/bench-links): bst would take minutes to
// build as many elements.
//
//	genrefs -n 1000 -project bench DIR
//	genrefs -n 40 -files 60 -size 100000 DIR   # 40 artifacts of 6 MB
//	genrefs -n 1 -first 7000 -files 3 -size 1048576 DIR   # artifact 7000 alone
//	genrefs -n 40 -files 60 -mixed DIR         # 40 artifacts as a build's
//
// Each artifact is files/ (-files files of -size bytes of its own random
// content; by default three small ones of text; with -mixed, sizes as a
// build's outputs: three of 1-2 MiB, the rest of 512 bytes to 64 KiB), meta/
// with keys.yaml (strong and weak key) and logs/, stored under its strong
// and its weak ref, as bst stores one. Artifact i (numbered from -first)
// is the same whatever else a run makes: runs with -first apart make
// different artifacts (scripts/bench-load's pushers each make fresh ones). It prints the strong refs, one per
// line.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"

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
	flag.Parse()
	if *mixed {
		*size = 0
	}
	if flag.NArg() != 1 || *n < 1 || *n > 1_000_000 || *first < 0 {
		fmt.Fprintln(os.Stderr, "usage: genrefs [-n N] [-first I] [-project NAME] [-files N [-size BYTES | -mixed]] DIR")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *project, *first, *n, *files, *size); err != nil {
		fmt.Fprintln(os.Stderr, "genrefs:", err)
		os.Exit(1)
	}
}

func run(dir, project string, first, n, files, size int) error {
	s, err := cache.Open(dir, cache.KindBst1Artifact)
	if err != nil {
		return err
	}
	for i := first; i < first+n; i++ {
		ref, err := artifact(s, project, i, contents(i, files, size))
		if err != nil {
			return err
		}
		fmt.Println(ref)
	}
	return nil
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

func artifact(s *cache.Store, project string, i int, contents [][]byte) (string, error) {
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
			return "", err
		}
		files = append(files, f)
	}
	k, err := file("keys.yaml", []byte(fmt.Sprintf("strong: %s\nweak: %s\n", strong, weak)))
	if err != nil {
		return "", err
	}
	meta = append(meta, k)
	fd, err := dir(&repb.Directory{Files: files})
	if err != nil {
		return "", err
	}
	md, err := dir(&repb.Directory{Files: meta})
	if err != nil {
		return "", err
	}
	ld, err := dir(&repb.Directory{})
	if err != nil {
		return "", err
	}
	root, err := dir(&repb.Directory{Directories: []*repb.DirectoryNode{
		{Name: "files", Digest: fd}, {Name: "logs", Digest: ld}, {Name: "meta", Digest: md},
	}})
	if err != nil {
		return "", err
	}
	ptr, err := proto.Marshal(root)
	if err != nil {
		return "", err
	}
	var ref string
	for _, k := range []string{strong, weak} {
		ref = project + "/" + element + "/" + k
		if err := s.SetRef(cache.KindArtifact, ref, ptr); err != nil {
			return "", err
		}
	}
	return project + "/" + element + "/" + strong, nil
}
