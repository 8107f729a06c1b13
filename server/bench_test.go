package server_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
)

// benchData is an artifact-like mix: many small files that go in batches
// and a few multi-MiB ones that stream through ByteStream (32 MiB in all).
func benchData(seed uint64) (map[digest.Digest][]byte, int64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	blobs := map[digest.Digest][]byte{}
	var total int64
	add := func(size int) {
		b := make([]byte, size)
		for i := 0; i < size; i += 8 {
			v := rng.Uint64()
			for j := 0; j < 8 && i+j < size; j++ {
				b[i+j] = byte(v >> (8 * j))
			}
		}
		d := digest.NewFromBlob(b)
		if _, dup := blobs[d]; !dup {
			blobs[d] = b
			total += int64(size)
		}
	}
	for i := 0; i < 1024; i++ {
		add(16 << 10)
	}
	for i := 0; i < 4; i++ {
		add(4 << 20)
	}
	return blobs, total
}

func digests(blobs map[digest.Digest][]byte) []digest.Digest {
	var ds []digest.Digest
	for d := range blobs {
		ds = append(ds, d)
	}
	return ds
}

// benchServers are the peers measured in the same run.
var benchServers = []struct {
	name  string
	start func(testing.TB) *testenv.Server
}{
	{"serve", func(tb testing.TB) *testenv.Server { return testenv.StartServe(tb, testenv.ServeOptions{Push: true}) }},
	{"bst-artifact-server", func(tb testing.TB) *testenv.Server {
		return testenv.StartArtifactServer(tb, testenv.ArtifactServerOptions{Push: true})
	}},
}

func benchRemote(b *testing.B, srv *testenv.Server) *remotes.Remote {
	r, err := remotes.Dial(context.Background(), config.Cache{
		Name: "bench", URL: srv.URL(), Type: config.TypeAll, MaxConcurrency: 8,
		Endpoint:   config.Endpoint{Target: srv.Addr},
		Connection: config.Connection{ConnectTimeout: 10e9, RequestTimeout: 300e9, RetryLimit: 1, RetryDelay: 1e8},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	remotes.Probe(context.Background(), r, config.TypeAll) // apply the server's batch limit
	return r
}

// BenchmarkUpload uploads fresh content each iteration.
func BenchmarkUpload(b *testing.B) {
	for _, s := range benchServers {
		b.Run(s.name, func(b *testing.B) {
			r := benchRemote(b, s.start(b))
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				blobs, total := benchData(uint64(i) + 100)
				b.SetBytes(total)
				b.StartTimer()
				if _, _, err := r.Upload(context.Background(), digests(blobs), testenv.MemoryOpener(blobs), 8); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDownload reads the same content each iteration, small blobs in
// batches and large ones streamed, every blob checked against its digest
// in memory: the client writes nothing, so the figure is the server's.
func BenchmarkDownload(b *testing.B) {
	for _, s := range benchServers {
		b.Run(s.name, func(b *testing.B) {
			r := benchRemote(b, s.start(b))
			blobs, total := benchData(1)
			ctx := context.Background()
			if _, _, err := r.Upload(ctx, digests(blobs), testenv.MemoryOpener(blobs), 8); err != nil {
				b.Fatal(err)
			}
			// Batches and streams go out 8 at a time, as a pull does.
			batches, large := r.Plan(digests(blobs))
			var jobs []func() error
			for _, batch := range batches {
				jobs = append(jobs, func() error {
					// BatchRead checks each blob against its digest.
					_, missing, err := r.BatchRead(ctx, batch)
					if err == nil && len(missing) > 0 {
						err = fmt.Errorf("missing %v", missing)
					}
					return err
				})
			}
			for _, d := range large {
				jobs = append(jobs, func() error {
					h := sha256.New()
					if err := r.ReadBlob(ctx, d, h); err != nil {
						return err
					}
					if hex.EncodeToString(h.Sum(nil)) != d.Hash {
						return fmt.Errorf("%s: wrong data", d)
					}
					return nil
				})
			}
			b.SetBytes(total)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var g errgroup.Group
				g.SetLimit(8)
				for _, job := range jobs {
					g.Go(job)
				}
				if err := g.Wait(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
