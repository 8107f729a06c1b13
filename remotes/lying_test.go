package remotes_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"google.golang.org/grpc/codes"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
	"github.com/bst-cache/bst-cache/remotes"
)

// lying puts the fault proxy, misbehaving as faults say, in front of a
// serve that holds blobs, and dials it with a 1 s stall window.
func lying(t *testing.T, faults testenv.ProxyFaults, blobs ...[]byte) *remotes.Remote {
	t.Helper()
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	direct := dial(t, cacheConfig("serve", srv.URL(), config.TypeAll))
	m := map[digest.Digest][]byte{}
	for _, b := range blobs {
		m[digest.NewFromBlob(b)] = b
	}
	if _, _, err := direct.Upload(context.Background(), digestsOf(m), testenv.MemoryOpener(m), 4); err != nil {
		t.Fatal(err)
	}
	c := cacheConfig("liar", "http://"+testenv.StartProxy(t, srv.Addr, faults), config.TypeAll)
	c.Connection.StallTimeout = time.Second
	return dial(t, c)
}

func digestsOf(m map[digest.Digest][]byte) []digest.Digest {
	var out []digest.Digest
	for d := range m {
		out = append(out, d)
	}
	return out
}

// A server whose GetTree pages never end (a repeated token, or empty pages
// with new tokens for ever) gets ErrBadTree at once, with memory bounded.
func TestGetTreeFromALyingServer(t *testing.T) {
	root := digest.NewFromBlob(nil)
	for _, mode := range []string{"repeat", "empty"} {
		t.Run(mode, func(t *testing.T) {
			r := lying(t, testenv.ProxyFaults{Tree: mode})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := r.GetTree(ctx, root)
			if !errors.Is(err, remotes.ErrBadTree) {
				t.Errorf("GetTree from a server whose pages never end: %v; want ErrBadTree", err)
			}
		})
	}
}

// ByteStream reads that never finish: empty messages for ever fail after
// the stall window; one byte a second fails at the read's deadline; a
// byte more than the digest's size fails at once. None keeps a core busy
// for long.
func TestReadFromALyingServer(t *testing.T) {
	blob := bytes.Repeat([]byte("abc"), 1000)
	d := digest.NewFromBlob(blob)
	timedOut := errors.New("DEADLINE_EXCEEDED")
	cases := []struct {
		mode string
		want error
		max  time.Duration
	}{
		{"empty", remotes.ErrStalled, 5 * time.Second},
		{"trickle", timedOut, 5 * time.Second},
		{"extra", remotes.ErrCorrupt, 5 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.mode, func(t *testing.T) {
			r := lying(t, testenv.ProxyFaults{Read: c.mode}, blob)
			var buf bytes.Buffer
			start := time.Now()
			err := r.ReadBlob(context.Background(), d, &buf)
			var re *remotes.Error
			is := errors.Is(err, c.want) || c.want == timedOut && errors.As(err, &re) && re.Code == codes.DeadlineExceeded
			if took := time.Since(start); !is || took > c.max {
				t.Errorf("read: %v after %s; want %v within %s", err, took.Round(time.Millisecond), c.want, c.max)
			}
		})
	}
}

// A server that answers a compressed read with a zstd bomb: the read
// fails as corrupt once the digest's size is passed, having written no
// more than that, and quickly.
func TestCompressedReadFromALyingServer(t *testing.T) {
	blob := bytes.Repeat([]byte("abc"), 1000)
	d := digest.NewFromBlob(blob)
	r := lying(t, testenv.ProxyFaults{Read: "bomb"}, blob)
	if res := probe(t, r, config.TypeAll); !res.Caps.Compressed {
		t.Fatalf("serve behind the proxy does not advertise zstd: %+v", res.Caps)
	}
	var buf bytes.Buffer
	start := time.Now()
	err := r.ReadBlob(context.Background(), d, &buf)
	if !errors.Is(err, remotes.ErrCorrupt) || time.Since(start) > 5*time.Second {
		t.Errorf("read of a bomb: %v after %s; want ErrCorrupt", err, time.Since(start))
	}
	if int64(buf.Len()) > d.Size {
		t.Errorf("%d bytes written for a %d-byte blob", buf.Len(), d.Size)
	}
}

// A BatchReadBlobs answer carrying a blob nobody asked for: it is dropped.
func TestBatchReadDropsUnaskedBlobs(t *testing.T) {
	blob, extra := []byte("asked for"), []byte("not asked for")
	r := lying(t, testenv.ProxyFaults{BatchExtra: extra}, blob)
	found, missing, err := r.BatchRead(context.Background(), []digest.Digest{digest.NewFromBlob(blob)})
	if err != nil || len(missing) != 0 || len(found) != 1 {
		t.Fatalf("BatchRead: %d found, %v missing, %v", len(found), missing, err)
	}
	if _, ok := found[digest.NewFromBlob(extra)]; ok {
		t.Error("a blob nobody asked for was returned")
	}
}
