package remotes_test

import (
	"bytes"
	"context"
	"math/rand"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/linksim"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// compressible is test content that zstd shrinks as it does build output:
// text with some variety, one blob over the batch limit (streamed) and
// many small ones (batched).
func compressible() map[digest.Digest][]byte {
	rng := rand.New(rand.NewSource(1))
	words := strings.Fields("static inline int const char void struct return if else for while bst cache artifact element")
	text := func(n int) []byte {
		var b bytes.Buffer
		for b.Len() < n {
			b.WriteString(words[rng.Intn(len(words))])
			b.WriteByte(" \n"[rng.Intn(2)])
		}
		return b.Bytes()[:n]
	}
	out := map[digest.Digest][]byte{}
	for _, b := range append([][]byte{text(6 << 20)}, func() (s [][]byte) {
		for range 200 {
			s = append(s, text(8<<10))
		}
		return s
	}()...) {
		out[digest.NewFromBlob(b)] = b
	}
	return out
}

// bazel-remote advertises ZSTD: blobs go up and come down compressed
// (ByteStream compressed-blobs and compressed batch entries), arrive byte
// for byte, and far fewer bytes cross the link than with compression off.
func TestZstdAgainstBazelRemote(t *testing.T) {
	blobs := compressible()
	var payload int64
	for d := range blobs {
		payload += d.Size
	}
	wire := map[config.Compression]int64{}
	for _, mode := range []config.Compression{config.CompressionAuto, config.CompressionOff} {
		srv := testenv.StartBazelRemote(t)
		link, addr := testenv.StartLink(t, strings.TrimPrefix(srv.URL(), "http://"), linksim.Profile{})
		c := cacheConfig("bazel", "http://"+addr, config.TypeStorage)
		c.Compression = mode
		r := dial(t, c)
		res := probe(t, r, config.TypeStorage)
		if res.Caps.Compressed != (mode == config.CompressionAuto) || r.Compressed() != res.Caps.Compressed {
			t.Fatalf("compression %s: caps say compressed=%t", mode, res.Caps.Compressed)
		}
		ctx := context.Background()
		ds := make([]digest.Digest, 0, len(blobs))
		for d := range blobs {
			ds = append(ds, d)
		}
		up0, _ := link.Bytes()
		if _, _, err := r.Upload(ctx, ds, testenv.MemoryOpener(blobs), 4); err != nil {
			t.Fatalf("compression %s: upload: %v", mode, err)
		}
		up1, down0 := link.Bytes()
		store, err := cache.Open(t.TempDir(), cache.KindBst2Artifact)
		if err != nil {
			t.Fatal(err)
		}
		batches, streamed := r.Plan(ds)
		if len(streamed) != 1 || len(batches) == 0 {
			t.Fatalf("plan: %d batches, %d streamed; want both kinds", len(batches), len(streamed))
		}
		for _, b := range batches {
			found, missing, err := r.BatchRead(ctx, b)
			if err != nil || len(missing) > 0 {
				t.Fatalf("compression %s: BatchRead: %v, %d missing", mode, err, len(missing))
			}
			for d, data := range found {
				if !bytes.Equal(data, blobs[d]) {
					t.Fatalf("compression %s: batch blob %s differs", mode, d)
				}
			}
		}
		w, _ := store.NewWriter(streamed[0])
		if err := r.ReadBlob(ctx, streamed[0], w); err != nil {
			t.Fatalf("compression %s: ReadBlob: %v", mode, err)
		}
		if err := w.Commit(); err != nil {
			t.Fatalf("compression %s: the streamed blob does not match its digest: %v", mode, err)
		}
		_, down1 := link.Bytes()
		wire[mode] = (up1 - up0) + (down1 - down0)
		t.Logf("compression %s: %d bytes up, %d down for %d bytes of blobs each way", mode, up1-up0, down1-down0, payload)
	}
	if wire[config.CompressionOff] < 2*payload {
		t.Errorf("uncompressed: %d bytes crossed for 2 x %d", wire[config.CompressionOff], payload)
	}
	if wire[config.CompressionAuto]*3 > wire[config.CompressionOff] {
		t.Errorf("zstd: %d bytes crossed, uncompressed %d: want under a third", wire[config.CompressionAuto], wire[config.CompressionOff])
	}
}

// Compressed batch entries are inflated where they are read, into memory
// used again for every batch, not into fresh memory and a stream decoder
// each: reading the same batch again and again from bazel-remote (which
// sends each entry zstd-compressed) allocates far less than the blobs'
// size per read. Before, each read allocated more than the blobs' size.
// A 1 MiB entry of random bytes (bazel-remote compresses those too) lies
// in many frames: joined in fresh memory for each read, it alone would
// cost twice its size a read.
func TestCompressedBatchInflatesInPlace(t *testing.T) {
	// No access log: the test process keeps bazel-remote's output, and
	// its buffer's growth would count as the client's.
	srv := testenv.StartBazelRemote(t, "--access_log_level", "none")
	r := dial(t, cacheConfig("bazel", srv.URL(), config.TypeStorage))
	if res := probe(t, r, config.TypeStorage); !res.Caps.Compressed {
		t.Fatal("bazel-remote does not advertise zstd")
	}
	ctx := context.Background()
	blobs := compressible()
	var batch []digest.Digest
	var size int64
	for d := range blobs {
		if d.Size < 64<<10 && size+d.Size < r.MaxBatchBytes()/2 {
			batch = append(batch, d)
			size += d.Size
		}
	}
	random := make([]byte, 1<<20)
	rand.New(rand.NewSource(2)).Read(random)
	rd := digest.NewFromBlob(random)
	blobs[rd] = random
	batch = append(batch, rd)
	size += rd.Size
	if _, _, err := r.Upload(ctx, batch, testenv.MemoryOpener(blobs), 4); err != nil {
		t.Fatal(err)
	}
	read := func() {
		n := 0
		missing, err := r.BatchReadEach(ctx, batch, func(d digest.Digest, data [][]byte) error {
			n++
			if !equalPieces(data, blobs[d]) {
				t.Fatalf("blob %s differs", d)
			}
			return nil
		})
		if err != nil || len(missing) > 0 || n != len(batch) {
			t.Fatalf("BatchReadEach: %v, %d missing, %d of %d read", err, len(missing), n, len(batch))
		}
	}
	read() // the buffers are made once
	// The median of single reads: a garbage collection may fall in one.
	var each []int64
	var mem runtime.MemStats
	for range 9 {
		runtime.ReadMemStats(&mem)
		before := mem.TotalAlloc
		read()
		runtime.ReadMemStats(&mem)
		each = append(each, int64(mem.TotalAlloc-before))
	}
	slices.Sort(each)
	median := each[len(each)/2]
	t.Logf("a batch of %d blobs, %d bytes: %d bytes allocated a read (median of %v)", len(batch), size, median, each)
	if median > size/2 && !raceEnabled {
		t.Errorf("reading a batch of %d compressed blobs (%d bytes) allocates %d bytes, want under half their size", len(batch), size, median)
	}
}

// equalPieces says whether pieces, joined, are b (without joining them).
func equalPieces(pieces [][]byte, b []byte) bool {
	for _, p := range pieces {
		if len(p) > len(b) || !bytes.Equal(p, b[:len(p)]) {
			return false
		}
		b = b[len(p):]
	}
	return len(b) == 0
}
