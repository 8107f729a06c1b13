package remotes_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
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
	liar, _ := lyingAndDirect(t, faults, blobs...)
	return liar
}

// lyingAndDirect is lying, with a connection to the serve behind the
// proxy too: what it holds, whatever the proxy said.
func lyingAndDirect(t *testing.T, faults testenv.ProxyFaults, blobs ...[]byte) (liar, direct *remotes.Remote) {
	t.Helper()
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	direct = dial(t, cacheConfig("serve", srv.URL(), config.TypeAll))
	m := map[digest.Digest][]byte{}
	for _, b := range blobs {
		m[digest.NewFromBlob(b)] = b
	}
	if _, _, err := direct.Upload(context.Background(), digestsOf(m), testenv.MemoryOpener(m), 4); err != nil {
		t.Fatal(err)
	}
	c := cacheConfig("liar", "http://"+testenv.StartProxy(t, srv.Addr, faults), config.TypeAll)
	c.Connection.StallTimeout = time.Second
	return dial(t, c), direct
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

// countCalls counts the calls of method a proxy takes (its OnCall).
func countCalls(method string) (*atomic.Int32, func(string)) {
	var n atomic.Int32
	return &n, func(m string) {
		if strings.HasSuffix(m, "/"+method) {
			n.Add(1)
		}
	}
}

// A BatchUpdateBlobs answer that does not account for a blob sent, as a
// server that lost track of part of a batch: it leaves the blob out, says
// OK twice for another blob in its place, or OK for a digest not sent.
// The blob is not taken as stored (the server behind does not hold it):
// it is sent again under the retry policy, then the upload fails naming
// the cache, its URL and the blob.
func TestBatchUpdateToALyingServer(t *testing.T) {
	kept, lost := []byte("a blob the server stores"), []byte("a blob the server loses")
	dk, dl := digest.NewFromBlob(kept), digest.NewFromBlob(lost)
	for _, answer := range []string{"", "twice", "other"} {
		t.Run("answer="+answer, func(t *testing.T) {
			calls, onCall := countCalls("BatchUpdateBlobs")
			liar, direct := lyingAndDirect(t, testenv.ProxyFaults{Unanswered: map[string]bool{dl.Hash: true}, Answer: answer, OnCall: onCall})
			err := liar.BatchUpdate(context.Background(), map[digest.Digest][]byte{dk: kept, dl: lost})
			var re *remotes.Error
			if !errors.As(err, &re) || re.Cache != "liar" || !strings.Contains(err.Error(), re.URL) || !strings.Contains(err.Error(), dl.String()) {
				t.Fatalf("BatchUpdate of a blob the answer does not account for: %v; want an error naming the cache, its URL and %s", err, dl)
			}
			t.Logf("%v", err)
			if n := calls.Load(); n != 2 {
				t.Errorf("%d BatchUpdateBlobs calls; want 2 (retry-limit 1)", n)
			}
			if missing, err := direct.FindMissing(context.Background(), []digest.Digest{dk, dl}); err != nil || !slices.Equal(missing, []digest.Digest{dl}) {
				t.Errorf("the server behind the proxy lacks %v (%v); want only the lost blob", missing, err)
			}
		})
	}
}

// A blob a batch answer left out once is sent again, alone, and stored.
func TestBatchUpdateSendsUnansweredBlobAgain(t *testing.T) {
	kept, lost := []byte("a blob the server stores"), []byte("a blob the server loses once")
	dk, dl := digest.NewFromBlob(kept), digest.NewFromBlob(lost)
	liar, direct := lyingAndDirect(t, testenv.ProxyFaults{Unanswered: map[string]bool{dl.Hash: true}, UnansweredCalls: 1})
	if err := liar.BatchUpdate(context.Background(), map[digest.Digest][]byte{dk: kept, dl: lost}); err != nil {
		t.Fatal(err)
	}
	if missing, err := direct.FindMissing(context.Background(), []digest.Digest{dk, dl}); err != nil || len(missing) > 0 {
		t.Errorf("after the upload the server lacks %v (%v)", missing, err)
	}
}

// A BatchReadBlobs answer that leaves a blob out, as a server that lost
// track of part of a batch: the blob is neither given nor taken as
// missing (a miss moves a pull on to the next cache quietly, or reports
// a hole). It is asked for again, and the read fails naming it when the
// server never answers for it.
func TestBatchReadFromALyingServer(t *testing.T) {
	kept, lost := []byte("a blob the server answers for"), []byte("a blob the answer leaves out")
	dk, dl := digest.NewFromBlob(kept), digest.NewFromBlob(lost)
	for _, times := range []int64{1, 0} { // once, then for ever
		t.Run(fmt.Sprintf("calls=%d", times), func(t *testing.T) {
			calls, onCall := countCalls("BatchReadBlobs")
			liar := lying(t, testenv.ProxyFaults{Unanswered: map[string]bool{dl.Hash: true}, UnansweredCalls: times, OnCall: onCall}, kept, lost)
			found, missing, err := liar.BatchRead(context.Background(), []digest.Digest{dk, dl})
			if times == 0 {
				if err == nil || !strings.Contains(err.Error(), dl.String()) || !strings.Contains(err.Error(), "liar") {
					t.Errorf("BatchRead from a server that never answers for %s: %d found, missing %v, %v; want an error naming the cache and the blob", dl, len(found), missing, err)
				}
			} else if err != nil || len(missing) > 0 || !bytes.Equal(found[dl], lost) || !bytes.Equal(found[dk], kept) {
				t.Errorf("BatchRead from a server that left a blob out once: %d found, missing %v, %v; want both found", len(found), missing, err)
			}
			if n := calls.Load(); n != 2 {
				t.Errorf("%d BatchReadBlobs calls; want 2", n)
			}
		})
	}
}

// A FindMissingBlobs answer naming a missing blob twice and one nobody
// asked about (a server merging its backends' answers carelessly): the
// caller hears of each missing blob it asked about once, and an upload
// sends only that, once.
func TestFindMissingFromALyingServer(t *testing.T) {
	held, lacked := []byte("a blob the server holds"), []byte("a blob the server lacks")
	dh, dl := digest.NewFromBlob(held), digest.NewFromBlob(lacked)
	liar := lying(t, testenv.ProxyFaults{MissingLies: true}, held)
	missing, err := liar.FindMissing(context.Background(), []digest.Digest{dh, dl})
	if err != nil || !slices.Equal(missing, []digest.Digest{dl}) {
		t.Errorf("FindMissing: %v, %v; want only %s", missing, err, dl)
	}
	blobs := map[digest.Digest][]byte{dh: held, dl: lacked}
	sent, bytes, err := liar.Upload(context.Background(), []digest.Digest{dh, dl}, testenv.MemoryOpener(blobs), 4)
	if err != nil || !slices.Equal(sent, []digest.Digest{dl}) || bytes != dl.Size {
		t.Errorf("Upload: sent %v, %d bytes, %v; want %s once", sent, bytes, err, dl)
	}
}
