package remotes_test

import (
	"context"
	"strings"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
)

// Plan packs small blobs into batches whose data and framing fit the limit,
// in order, and leaves larger ones to ByteStream.
func TestPlan(t *testing.T) {
	size := func(n int64) digest.Digest { return digest.Digest{Hash: strings.Repeat("a", 64), Size: n} }
	// A 1 MiB server limit leaves 1 MiB - 64 KiB per batch; each blob
	// also counts 256 bytes of framing.
	const limit = 1<<20 - 64<<10
	tests := []struct {
		name     string
		in       []digest.Digest
		batches  [][]int64
		streamed []int64
	}{
		{"empty", nil, nil, nil},
		{"one small", []digest.Digest{size(10)}, [][]int64{{10}}, nil},
		{"fills then starts another", []digest.Digest{size(limit / 2), size(limit / 2), size(10)},
			[][]int64{{limit / 2}, {limit / 2, 10}}, nil},
		{"exactly at the limit with framing", []digest.Digest{size(limit - 256)}, [][]int64{{limit - 256}}, nil},
		{"one byte over goes to ByteStream", []digest.Digest{size(limit - 255), size(1)}, [][]int64{{1}}, []int64{limit - 255}},
		{"empty blobs batch", []digest.Digest{size(0), size(0)}, [][]int64{{0, 0}}, nil},
	}
	r, err := remotes.Dial(context.Background(), config.Cache{
		Name: "plan", URL: "http://127.0.0.1:1", MaxConcurrency: 1,
		Endpoint: config.Endpoint{Target: "127.0.0.1:1"}, Connection: config.Connection{ConnectTimeout: 1e9, RequestTimeout: 1e9},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.SetMaxBatchBytes(1 << 20)
	sizes := func(ds []digest.Digest) []int64 {
		var out []int64
		for _, d := range ds {
			out = append(out, d.Size)
		}
		return out
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			batches, streamed := r.Plan(tt.in)
			var got [][]int64
			for _, b := range batches {
				got = append(got, sizes(b))
			}
			if diff := cmp.Diff(tt.batches, got); diff != "" {
				t.Errorf("batches (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.streamed, sizes(streamed)); diff != "" {
				t.Errorf("streamed (-want +got):\n%s", diff)
			}
		})
	}
}

// A blob whose content no longer matches its digest's size is not sent,
// and the error names it; the server stores nothing.
func TestUploadChangedContent(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	r := dial(t, cacheConfig("serve", srv.URL(), config.TypeAll))
	probe(t, r, config.TypeAll)
	for _, n := range []int{10, 5 << 20} { // a batch, a stream
		want := digest.NewFromBlob(make([]byte, n))
		short := map[digest.Digest][]byte{want: make([]byte, n-1)}
		long := map[digest.Digest][]byte{want: make([]byte, n+1)}
		for name, blobs := range map[string]map[digest.Digest][]byte{"shorter": short, "longer": long} {
			_, _, err := r.Upload(context.Background(), []digest.Digest{want}, testenv.MemoryOpener(blobs), 1)
			if err == nil || !strings.Contains(err.Error(), want.Hash) {
				t.Errorf("%d-byte blob read %s: %v; want an error naming it", n, name, err)
			}
		}
		if missing, err := r.FindMissing(context.Background(), []digest.Digest{want}); err != nil || len(missing) != 1 {
			t.Errorf("after failed uploads FindMissing = %v, %v; want the blob missing", missing, err)
		}
	}
}
