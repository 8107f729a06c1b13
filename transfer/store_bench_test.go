package transfer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
)

// benchStore fills a BuildStream 1 store with refs artifacts of files
// files of size bytes each, every one distinct.
func benchStore(b *testing.B, refs, files, size int) *Engine {
	b.Helper()
	s, err := cache.Open(b.TempDir(), cache.KindBst1Artifact)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, size)
	for r := range refs {
		dir := &repb.Directory{}
		for f := range files {
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			d, err := s.Add(buf)
			if err != nil {
				b.Fatal(err)
			}
			dir.Files = append(dir.Files, &repb.FileNode{Name: fmt.Sprintf("f%04d", f), Digest: d.ToProto()})
		}
		data, _ := proto.Marshal(dir)
		root, err := s.Add(data)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.SetRef(cache.KindArtifact, fmt.Sprintf("bench/el%05d/key", r), buildstream.V1RefContent(root)); err != nil {
			b.Fatal(err)
		}
	}
	return &Engine{Store: s, Kind: cache.KindBst1Artifact}
}

// Verify of a 200 MB store: every byte hashed again.
func BenchmarkVerify200MB(b *testing.B) {
	e := benchStore(b, 50, 16, 256<<10)
	infos, _ := e.Store.ListRefs(cache.KindArtifact, "")
	var refs []string
	for _, i := range infos {
		refs = append(refs, i.Name)
	}
	b.SetBytes(200 << 20)
	b.ResetTimer()
	for b.Loop() {
		rep, err := e.Verify(context.Background(), refs, true, false)
		if err != nil || len(rep.Problems) > 0 {
			b.Fatal(err, rep.Problems)
		}
	}
}

// gc of a store with 100,000 objects, half of them no longer reached: the
// first pass removes them, later passes find nothing to do.
func BenchmarkGC100kObjects(b *testing.B) {
	e := benchStore(b, 1000, 99, 64)
	infos, _ := e.Store.ListRefs(cache.KindArtifact, "")
	for _, i := range infos[:500] {
		e.Store.DeleteRef(cache.KindArtifact, i.Name)
	}
	b.ResetTimer()
	first := true
	for b.Loop() {
		rep, err := e.GC(context.Background(), GCOptions{Grace: -1})
		if err != nil {
			b.Fatal(err)
		}
		if first && rep.Objects != 50000 {
			b.Fatalf("first gc removed %d objects, want 50000", rep.Objects)
		}
		first = false
	}
}
