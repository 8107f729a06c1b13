package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/zstdwire"
)

// readChunk is the size of each ByteStream Read response.
const readChunk = 1 << 20

// byteStream serves google.bytestream.ByteStream for a Server.
type byteStream struct{ *Server }

// resource is a parsed ByteStream resource name.
type resource struct {
	instance string
	digest   digest.Digest
	// compressed is set for compressed-blobs/zstd resources: the bytes on
	// the wire are one zstd frame of the blob.
	compressed bool
}

// parseResource parses "[{instance}/]blobs/{hash}/{size}[/...]" for reads
// and "[{instance}/]uploads/{uuid}/blobs/{hash}/{size}[/...]" for writes,
// with "compressed-blobs/zstd" in place of "blobs" for compressed ones.
// The instance name may itself contain slashes.
func parseResource(name string, write bool) (resource, error) {
	bad := func(why string) (resource, error) {
		want := "[INSTANCE/]blobs/HASH/SIZE"
		if write {
			want = "[INSTANCE/]uploads/UUID/blobs/HASH/SIZE"
		}
		return resource{}, status.Errorf(codes.InvalidArgument, "malformed resource name %q: %s (want %s)", name, why, want)
	}
	parts := strings.Split(name, "/")
	i := -1
	for j, p := range parts {
		if (write && p == "uploads") || (!write && (p == "blobs" || p == "compressed-blobs")) {
			i = j
			break
		}
	}
	if i < 0 {
		return bad("no " + map[bool]string{true: "uploads", false: "blobs"}[write] + " component")
	}
	rest := parts[i:]
	if write {
		if len(rest) < 3 || rest[1] == "" {
			return bad("expected uploads/UUID/blobs/HASH/SIZE")
		}
		rest = rest[2:]
	}
	compressed := false
	switch rest[0] {
	case "blobs":
		rest = rest[1:]
	case "compressed-blobs":
		if len(rest) < 2 || rest[1] != zstdwire.Compressor {
			return resource{}, status.Errorf(codes.InvalidArgument, "resource %q: the server compresses with zstd only (supported_compressors)", name)
		}
		rest, compressed = rest[2:], true
	default:
		return bad("expected blobs or compressed-blobs/zstd")
	}
	if len(rest) < 2 {
		return bad("missing hash or size")
	}
	size, err := strconv.ParseInt(rest[1], 10, 64)
	if err != nil {
		return bad("size is not a number")
	}
	d := digest.Digest{Hash: rest[0], Size: size}
	if err := d.Validate(); err != nil {
		return bad(err.Error())
	}
	return resource{instance: strings.Join(parts[:i], "/"), digest: d, compressed: compressed}, nil
}

// Read streams a blob from read_offset, at most read_limit bytes (0: to the
// end). A whole-blob read is hashed on the way and ends in DATA_LOSS if the
// stored object turns out corrupt.
func (b byteStream) Read(req *bsgrpc.ReadRequest, stream bsgrpc.ByteStream_ReadServer) (err error) {
	defer func() {
		// A read served is a hit, NOT_FOUND a miss; a bad request, a
		// corrupt blob, a client gone count as neither.
		if code := status.Code(err); code == codes.OK || code == codes.NotFound {
			b.count.looked(LookupBlob, code == codes.OK)
		}
	}()
	res, err := parseResource(req.GetResourceName(), false)
	if err != nil {
		return err
	}
	if err := b.checkInstance(res.instance); err != nil {
		return err
	}
	d := res.digest
	off, limit := req.GetReadOffset(), req.GetReadLimit()
	if off < 0 || off > d.Size {
		return status.Errorf(codes.OutOfRange, "read_offset %d is outside blob %s", off, d)
	}
	if limit < 0 {
		return status.Errorf(codes.InvalidArgument, "negative read_limit %d", limit)
	}
	if res.compressed && limit != 0 {
		return status.Errorf(codes.InvalidArgument, "read_limit must be 0 for compressed-blobs")
	}
	f, err := b.store.Open(d)
	if errors.Is(err, cache.ErrNotFound) && b.upstream != nil {
		if off == 0 && (limit == 0 || limit >= d.Size) {
			return b.readThrough(stream, d, res.compressed)
		}
		// Part of a blob: fill it first, then read it here.
		if err = b.fill(stream.Context(), d, io.Discard); err == nil {
			f, err = b.store.Open(d)
		}
	}
	if err != nil {
		return grpcError(err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() != d.Size {
		// The hash is here with another size: not the blob asked for.
		return status.Errorf(codes.NotFound, "no blob %s here", d)
	}
	b.lend(clientOf(stream.Context()), d)
	end := d.Size
	if limit > 0 && off+limit < end {
		end = off + limit
	}
	whole := off == 0 && end == d.Size
	h := sha256.New()
	send, finish := sender(stream, res.compressed, &b.count)
	defer finish(false)
	buf := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(buf)
	if whole && end == 0 && d.Hash != emptyDigest.Hash {
		// No bytes to hash on the way: an empty file named as another.
		b.logf("corrupt object %s in the store", d)
		return status.Errorf(codes.DataLoss, "blob %s is corrupt on the server", d)
	}
	for pos := off; pos < end; {
		n, err := f.ReadAt((*buf)[:min(int64(len(*buf)), end-pos)], pos)
		if n == 0 && err != nil {
			if errors.Is(err, io.EOF) {
				return status.Errorf(codes.DataLoss, "blob %s is truncated on the server", d)
			}
			return status.Errorf(codes.Internal, "reading %s: %v", d, err)
		}
		pos += int64(n)
		if whole {
			h.Write((*buf)[:n])
			// The last bytes go only once the whole blob proved good: a
			// client never gets all of a corrupt blob, whatever it makes
			// of the status that ends the stream.
			if pos == end && hex.EncodeToString(h.Sum(nil)) != d.Hash {
				b.logf("corrupt object %s in the store", d)
				return status.Errorf(codes.DataLoss, "blob %s is corrupt on the server", d)
			}
		}
		if err := send((*buf)[:n]); err != nil {
			return err
		}
	}
	return finish(true)
}

// readBuffers hold what a read takes from a file before it is sent: gRPC
// marshals a message within Send (the proto codec copies its bytes), so a
// buffer serves a whole read, then the next one.
var readBuffers = sync.Pool{New: func() any {
	b := make([]byte, readChunk)
	return &b
}}

// sender is how a read's bytes go out: as they are, or (compressed-blobs)
// through zstd, since the store keeps blobs as BuildStream does,
// uncompressed. end(true) ends the stream's content; end(false), after a
// failure, drops what is left; it is called last in any case. What is
// sent is counted in c.
func sender(stream bsgrpc.ByteStream_ReadServer, compressed bool, c *counters) (send func([]byte) error, end func(ok bool) error) {
	// raw sends a message and counts its bytes on the wire.
	raw := func(p []byte) error {
		err := stream.Send(&bsgrpc.ReadResponse{Data: p})
		if err == nil && compressed {
			c.moved(Out, Zstd, 0, int64(len(p)))
		} else if err == nil {
			c.moved(Out, Identity, int64(len(p)), int64(len(p)))
		}
		return err
	}
	if !compressed {
		return raw, func(bool) error { return nil }
	}
	z := &compressedSend{out: &messages{send: raw}, count: c}
	return z.send, func(ok bool) error {
		if ok {
			return z.close()
		}
		z.abandon()
		z.out.release()
		return nil
	}
}

// readThrough serves a whole blob the store lacks from the upstreams as it
// arrives (fill), in messages of at most readChunk bytes.
func (b byteStream) readThrough(stream bsgrpc.ByteStream_ReadServer, d digest.Digest, compressed bool) error {
	send, end := sender(stream, compressed, &b.count)
	defer end(false)
	out := &messages{send: send}
	defer out.release()
	if err := b.fill(stream.Context(), d, out); err != nil {
		return err
	}
	if err := out.flush(); err != nil {
		return err
	}
	return end(true)
}

// fill streams a blob the store lacks from the upstreams to w, storing it
// on the way. A blob that does not match its digest is DATA_LOSS (w may
// have had part of it), and nothing is stored.
func (b byteStream) fill(ctx context.Context, d digest.Digest, w io.Writer) error {
	up, uctx := b.upstreamFor(ctx)
	if up == nil {
		return status.Errorf(codes.NotFound, "no blob %s here (and the request came through this mirror already)", d)
	}
	start := time.Now()
	found, err := up.StreamBlob(uctx, d, w)
	switch {
	case err == nil && !found:
		b.logf("upstream: blob %s: miss", d)
		return status.Errorf(codes.NotFound, "no blob %s here or upstream", d)
	case errors.Is(err, cache.ErrDigestMismatch):
		return status.Errorf(codes.DataLoss, "blob %s from upstream did not match its digest: not stored", d)
	case err != nil && ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case err != nil && !found:
		return grpcError(err)
	case err != nil:
		return status.Errorf(codes.Unavailable, "blob %s: upstream failed during the read: %v", d, err)
	}
	if ok, _ := b.store.Has(d); ok {
		b.stored(d, "")
		b.logf("upstream: blob %s: filled in %s", d, time.Since(start).Round(time.Millisecond))
	} else {
		b.logf("upstream: blob %s: served through, not stored (larger than the quota)", d)
	}
	return nil
}

// compressedSend sends a read's bytes as one zstd frame, compressed or
// in raw blocks as the first chunk shows the blob deserves: content that
// does not compress costs a copy, not an encoder's search.
type compressedSend struct {
	out   *messages
	zw    *zstdwire.Writer
	count *counters // counts the blob bytes compressed
}

func (z *compressedSend) send(p []byte) error {
	if z.zw == nil {
		z.zw = zstdwire.NewWriterFor(z.out, p)
	}
	n, err := z.zw.Write(p)
	z.count.moved(Out, Zstd, int64(n), 0)
	return err
}

// close ends the frame (an empty one for an empty read).
func (z *compressedSend) close() error {
	if z.zw == nil {
		z.zw = zstdwire.NewWriterFor(z.out, nil)
	}
	err := z.zw.Close()
	z.zw = nil
	if err == nil {
		err = z.out.flush()
	}
	return err
}

// abandon returns an encoder a failed read still holds, sending nothing
// more.
func (z *compressedSend) abandon() {
	if z.zw != nil {
		z.out.err = errAbandoned
		z.zw.Close()
		z.zw = nil
	}
}

var errAbandoned = errors.New("read abandoned")

// messages gathers what a zstd writer produces into ReadResponses of
// readChunk bytes, in one buffer from readBuffers (Send copies what it
// sends; see readBuffers) until release; the first error sticks.
type messages struct {
	send func([]byte) error
	buf  *[]byte
	n    int
	err  error
}

func (m *messages) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 && m.err == nil {
		if m.buf == nil {
			m.buf = readBuffers.Get().(*[]byte)
		}
		k := copy((*m.buf)[m.n:], p)
		m.n += k
		p = p[k:]
		if m.n == len(*m.buf) {
			m.flush()
		}
	}
	if m.err != nil {
		return 0, m.err
	}
	return total, nil
}

// flush sends what is gathered.
func (m *messages) flush() error {
	if m.n > 0 && m.err == nil {
		m.err = m.send((*m.buf)[:m.n])
	}
	m.n = 0
	return m.err
}

// release returns the buffer; the messages must not be written after.
func (m *messages) release() {
	if m.buf != nil {
		readBuffers.Put(m.buf)
		m.buf = nil
	}
}

// Write receives a blob, possibly over several streams (a client resumes at
// QueryWriteStatus's committed_size). Data is verified before the blob
// becomes visible; a blob already present completes at once. A stream that
// breaks off parks its upload (no file held) for a resume.
func (b byteStream) Write(stream bsgrpc.ByteStream_WriteServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := b.checkWrite(); err != nil {
		return err
	}
	name := req.GetResourceName()
	res, err := parseResource(name, true)
	if err != nil {
		return err
	}
	if err := b.checkInstance(res.instance); err != nil {
		return err
	}
	d := res.digest
	if ok, err := b.store.Has(d); err == nil && ok {
		b.touch(d)
		committed := d.Size
		if res.compressed {
			committed = -1 // REAPI's word for "already there" on compressed uploads
		}
		return stream.SendAndClose(&bsgrpc.WriteResponse{CommittedSize: committed})
	}
	release, err := b.checkSpace(stream.Context(), d)
	if err != nil {
		return err
	}
	defer release() // once stored (accounted), parked (counted as parked) or failed
	var from net.Addr
	if p, ok := peer.FromContext(stream.Context()); ok {
		from = p.Addr
	}
	if res.compressed && req.GetWriteOffset() != 0 {
		return status.Errorf(codes.InvalidArgument, "write_offset %d: compressed uploads of %s start at 0 and cannot be resumed here", req.GetWriteOffset(), d)
	}
	u, err := b.uploads.start(name, d, req.GetWriteOffset(), peerOf(from))
	if err != nil {
		return err
	}
	if res.compressed {
		return b.writeCompressed(stream, req, name, u, d)
	}
	for {
		if off := req.GetWriteOffset(); off != u.w.Written() {
			b.uploads.park(name, u)
			return status.Errorf(codes.InvalidArgument, "write_offset %d, but %d bytes of %s are committed", off, u.committed.Load(), d)
		}
		if int64(len(req.GetData())) > d.Size-u.w.Written() {
			b.uploads.end(name, u, true)
			return status.Errorf(codes.InvalidArgument, "write past the declared size of %s (%d bytes)", d, d.Size)
		}
		if _, err := u.w.Write(req.GetData()); err != nil {
			b.uploads.end(name, u, true)
			return grpcError(fmt.Errorf("storing %s: %w", d, err))
		}
		b.count.moved(In, Identity, int64(len(req.GetData())), int64(len(req.GetData())))
		u.committed.Store(u.w.Written())
		if req.GetFinishWrite() {
			return b.finishUpload(stream, name, u, d, d.Size)
		}
		if req, err = stream.Recv(); err != nil {
			b.uploads.park(name, u) // kept for a resume
			if errors.Is(err, io.EOF) {
				return status.Errorf(codes.InvalidArgument, "stream for %s ended after %d of %d bytes without finish_write", d, u.committed.Load(), d.Size)
			}
			return err
		}
	}
}

// writeCompressed receives one zstd frame of a blob, inflated into the
// upload as it comes and bounded by the digest's size (a bomb fails at the
// first byte too many). Such an upload is not parked when the stream
// breaks: the client starts it again, as it would a compressed upload on
// any server that cannot resume one.
func (b byteStream) writeCompressed(stream bsgrpc.ByteStream_WriteServer, first *bsgrpc.WriteRequest, name string, u *upload, d digest.Digest) error {
	src := &writeRequests{stream: stream, next: first}
	n, err := zstdwire.Copy(u.w, src, d.Size)
	b.count.moved(In, Zstd, n, src.off)
	if err == nil && !src.finished {
		err = status.Errorf(codes.InvalidArgument, "the zstd frame for %s ended before finish_write", d)
	}
	if err != nil {
		b.uploads.end(name, u, true)
		switch {
		case errors.Is(err, zstdwire.ErrTooLarge):
			return status.Errorf(codes.InvalidArgument, "the zstd data for %s inflates past its %d bytes", d, d.Size)
		case errors.Is(err, zstdwire.ErrCorrupt):
			return status.Errorf(codes.InvalidArgument, "compressed upload of %s: %v", d, err)
		}
		return grpcError(fmt.Errorf("storing %s: %w", d, err))
	}
	u.committed.Store(u.w.Written())
	// Like bazel-remote, a compressed upload reports the compressed bytes
	// it took.
	return b.finishUpload(stream, name, u, d, src.off)
}

// writeRequests reads the data of a compressed upload's WriteRequests as
// one stream, checking each write_offset (the compressed bytes so far).
type writeRequests struct {
	stream   bsgrpc.ByteStream_WriteServer
	next     *bsgrpc.WriteRequest
	buf      []byte
	off      int64
	finished bool
}

func (w *writeRequests) Read(p []byte) (int, error) {
	for len(w.buf) == 0 {
		if w.finished {
			return 0, io.EOF
		}
		req := w.next
		w.next = nil
		if req == nil {
			var err error
			if req, err = w.stream.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					return 0, status.Errorf(codes.InvalidArgument, "the stream ended after %d compressed bytes without finish_write", w.off)
				}
				return 0, err
			}
		}
		if req.GetWriteOffset() != w.off {
			return 0, status.Errorf(codes.InvalidArgument, "write_offset %d, but %d compressed bytes came before", req.GetWriteOffset(), w.off)
		}
		w.buf = req.GetData()
		w.off += int64(len(w.buf))
		w.finished = req.GetFinishWrite()
	}
	n := copy(p, w.buf)
	w.buf = w.buf[n:]
	return n, nil
}

// finishUpload verifies and installs a complete upload.
func (b byteStream) finishUpload(stream bsgrpc.ByteStream_WriteServer, name string, u *upload, d digest.Digest, committed int64) error {
	w := u.w
	b.uploads.end(name, u, false)
	if w.Written() != d.Size {
		w.Abort()
		return status.Errorf(codes.InvalidArgument, "finish_write after %d bytes; %s has %d", w.Written(), d, d.Size)
	}
	if err := w.Commit(); err != nil {
		return grpcError(err)
	}
	b.stored(d, clientOf(stream.Context()))
	return stream.SendAndClose(&bsgrpc.WriteResponse{CommittedSize: committed})
}

// checkSpace refuses a blob larger than the quota or the free disk space,
// and reserves its room under the quota for the upload of the client ctx
// is a call of until release (waiting for it while ctx lasts).
func (b byteStream) checkSpace(ctx context.Context, d digest.Digest) (release func(), err error) {
	release = func() {}
	if b.quota != nil && d.Size > b.quota.limit {
		return nil, status.Errorf(codes.ResourceExhausted, "blob %s is larger than the server's quota (%d bytes)", d, b.quota.limit)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(b.store.Root(), &st); err == nil {
		if free := int64(st.Bavail) * int64(st.Bsize); d.Size > free {
			return nil, status.Errorf(codes.ResourceExhausted, "blob %s does not fit: %d bytes free on the server", d, free)
		}
	}
	if b.quota != nil {
		// Parked uploads are disk too: they count against the quota.
		res, err := b.quota.admit(ctx, d.Size, b.uploads.parkedSize(), clientOf(ctx), new(time.Time))
		if err != nil {
			return nil, err
		}
		return res.release, nil
	}
	return release, nil
}

// QueryWriteStatus reports how much of an upload the server holds.
func (b byteStream) QueryWriteStatus(_ context.Context, req *bsgrpc.QueryWriteStatusRequest) (*bsgrpc.QueryWriteStatusResponse, error) {
	res, err := parseResource(req.GetResourceName(), true)
	if err != nil {
		return nil, err
	}
	if err := b.checkInstance(res.instance); err != nil {
		return nil, err
	}
	if ok, err := b.store.Has(res.digest); err == nil && ok {
		return &bsgrpc.QueryWriteStatusResponse{CommittedSize: res.digest.Size, Complete: true}, nil
	}
	committed, ok := b.uploads.committed(req.GetResourceName())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no upload in progress for %q", req.GetResourceName())
	}
	return &bsgrpc.QueryWriteStatusResponse{CommittedSize: committed}, nil
}
