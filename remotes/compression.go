package remotes

import (
	"fmt"
	"io"
	"slices"
	"strconv"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/zstdwire"
)

// compression is what a cache takes and gives zstd-compressed, from its
// capabilities and the cache's compression setting.
type compression struct {
	// streams: supported_compressors has ZSTD, which covers
	// compressed-blobs ByteStream resources and acceptable_compressors in
	// BatchReadBlobs.
	streams bool
	// batchUpdate: supported_batch_update_compressors has ZSTD.
	batchUpdate bool
}

// setCompression turns zstd on where the cache advertises it, unless the
// cache's compression setting is "off".
func (r *Remote) setCompression(cc *repb.CacheCapabilities) {
	if r.compress == config.CompressionOff {
		return
	}
	r.zstd = compression{
		streams:     slices.Contains(cc.GetSupportedCompressors(), repb.Compressor_ZSTD),
		batchUpdate: slices.Contains(cc.GetSupportedBatchUpdateCompressors(), repb.Compressor_ZSTD),
	}
}

// Compressed reports whether blobs travel zstd-compressed to and from this
// cache (set by Probe).
func (r *Remote) Compressed() bool { return r.zstd.streams }

// readName is the ByteStream resource a blob is read from.
func (r *Remote) readName(d digest.Digest) (string, error) {
	if r.zstd.streams {
		return r.sdk.ResourceName("compressed-blobs", zstdwire.Compressor, d.Hash, strconv.FormatInt(d.Size, 10))
	}
	return r.sdk.ResourceName("blobs", d.Hash, strconv.FormatInt(d.Size, 10))
}

// writeName is the ByteStream resource a blob is uploaded to under the
// upload UUID id.
func (r *Remote) writeName(id string, d digest.Digest, compressed bool) (string, error) {
	size := strconv.FormatInt(d.Size, 10)
	if compressed {
		return r.sdk.ResourceName("uploads", id, "compressed-blobs", zstdwire.Compressor, d.Hash, size)
	}
	return r.sdk.ResourceName("uploads", id, "blobs", d.Hash, size)
}

// compressUpload says whether a blob whose content starts with head goes
// up compressed: when the cache takes zstd and the content compresses.
// Random or already compressed content goes as it is, which spares both
// sides an encoder and a decoder that find nothing.
func (r *Remote) compressUpload(head []byte) bool {
	return r.zstd.streams && zstdwire.Compressible(head)
}

// batchEntry is the data of one BatchReadBlobs answer, in pieces as it
// came, or inflated into room when the server compressed it; the caller
// checks the digest.
func batchEntry(e *batchAnswer, d digest.Digest, room *inflateRoom) ([][]byte, error) {
	if e.compressor == repb.Compressor_IDENTITY {
		return e.data, nil
	}
	data, err := zstdwire.InflateInto(e.compressor, room.joined(e.data), d.Size, room.take(d.Size))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w: %v", d, ErrCorrupt, err)
	}
	return append(e.data[:0], data), nil
}

// inflateRoom is where a batch answer's compressed entries are inflated:
// one buffer of downloadPool for them all, taken when the first is and
// given back (free) once the caller is done with every entry. Each entry
// asked for is inflated once, so the room is the total size of the
// blobs asked, at most.
type inflateRoom struct {
	size int64 // what the buffer is taken for
	buf  *[]byte
	used int64
	// join is where an entry that came in several pieces is joined
	// before it is inflated: a buffer of downloadPool too.
	join *[]byte
}

// joined is pieces as one slice: the piece itself when there is one.
func (r *inflateRoom) joined(pieces [][]byte) []byte {
	if len(pieces) == 1 {
		return pieces[0]
	}
	return joinInto(&r.join, pieces)
}

// joinInto copies pieces one after the other into *buf, a buffer of
// downloadPool taken, or exchanged for a larger one, as needed.
func joinInto(buf **[]byte, pieces [][]byte) []byte {
	n := 0
	for _, p := range pieces {
		n += len(p)
	}
	if *buf != nil && cap(**buf) < n {
		downloadPool.Put(*buf)
		*buf = nil
	}
	if *buf == nil {
		*buf = downloadPool.Get(n)
	}
	b := (**buf)[:0]
	for _, p := range pieces {
		b = append(b, p...)
	}
	return b
}

// take returns n bytes of room (n of the blobs asked for, so within
// size).
func (r *inflateRoom) take(n int64) []byte {
	if r.buf == nil {
		r.buf = downloadPool.Get(int(r.size))
	}
	if r.used+n > int64(len(*r.buf)) {
		return make([]byte, n) // not one of the blobs counted in size
	}
	b := (*r.buf)[r.used : r.used+n : r.used+n]
	r.used += n
	return b
}

func (r *inflateRoom) free() {
	for _, b := range []**[]byte{&r.buf, &r.join} {
		if *b != nil {
			downloadPool.Put(*b)
			*b = nil
		}
	}
}

// updateEntry is one BatchUpdateBlobs request, compressed when the cache
// takes it and that makes it smaller.
func (r *Remote) updateEntry(d digest.Digest, data []byte) *repb.BatchUpdateBlobsRequest_Request {
	req := &repb.BatchUpdateBlobsRequest_Request{Digest: d.ToProto(), Data: data}
	if r.zstd.batchUpdate {
		if z, ok := zstdwire.CompressEntry(data); ok {
			req.Data, req.Compressor = z, repb.Compressor_ZSTD
		}
	}
	return req
}

// boundedWriter passes at most limit bytes on to w, counting them in *off;
// a byte more is corrupt data from the server. Errors of w are local.
type boundedWriter struct {
	w     io.Writer
	off   *int64
	limit int64
}

func (b boundedWriter) Write(p []byte) (int, error) {
	if *b.off+int64(len(p)) > b.limit {
		return 0, fmt.Errorf("%w: the server sent more than the %d bytes its digest says", ErrCorrupt, b.limit)
	}
	if _, err := b.w.Write(p); err != nil {
		return 0, localError{err}
	}
	*b.off += int64(len(p))
	return len(p), nil
}
