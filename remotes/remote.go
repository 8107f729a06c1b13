package remotes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/client"
	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/zstdwire"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// ErrCorrupt is wrapped when a cache returns data that does not match its
// digest. Such data is never stored.
var ErrCorrupt = errors.New("data does not match its digest")

// Remote is a connection to one cache. It is safe for concurrent use; every
// method may be retried by the caller and honours ctx.
type Remote struct {
	name, url, instance string
	target              string // host:port or unix:PATH
	tls                 bool
	conn                config.Connection
	compress            config.Compression
	zstd                compression // set by Probe
	sem                 chan struct{}
	// uploadKey, when set, names uploads so the next run finds them.
	uploadKey string
	// creds are the per-RPC credentials (a token file, a helper), if any.
	creds creds
	// noQueryWrite: the server answered QueryWriteStatus UNIMPLEMENTED.
	noQueryWrite atomic.Bool

	cc     *grpc.ClientConn
	sdk    *client.Client
	caps   repb.CapabilitiesClient
	cas    repb.ContentAddressableStorageClient
	refs   bspb.ReferenceStorageClient
	fetch  assetpb.FetchClient
	pushRA assetpb.PushClient
	// maxRead is the batch limit and chunk the ByteStream write chunk;
	// both only shrink during a run, after a message-size refusal.
	maxRead atomic.Int64
	chunk   atomic.Int64
}

func (r *Remote) bindStubs() {
	r.caps = repb.NewCapabilitiesClient(r.cc)
	r.cas = repb.NewContentAddressableStorageClient(r.cc)
	r.refs = bspb.NewReferenceStorageClient(r.cc)
	r.fetch = assetpb.NewFetchClient(r.cc)
	r.pushRA = assetpb.NewPushClient(r.cc)
	r.SetMaxBatchBytes(DefaultMaxBatchBytes)
}

// DefaultMaxBatchBytes is the batch size used until a server says otherwise.
const DefaultMaxBatchBytes = 4 << 20

// batchMargin is left free in each batch for the message's own framing.
const batchMargin = 64 << 10

// Name is the cache's configured name.
func (r *Remote) Name() string { return r.name }

// URL is the cache's configured URL.
func (r *Remote) URL() string { return r.url }

// Close closes the connection.
func (r *Remote) Close() error { return r.sdk.Close() }

// SetMaxBatchBytes sets the total size of blobs in one batch call, from the
// server's max_batch_total_size_bytes (0 means no limit of its own, so the
// gRPC message limit applies). A margin is kept for framing.
func (r *Remote) SetMaxBatchBytes(n int64) {
	if n <= 0 || n > MaxMessageBytes {
		n = DefaultMaxBatchBytes
	}
	limit := n - batchMargin
	if limit < n/2 {
		limit = n / 2
	}
	r.maxRead.Store(limit)
	client.MaxBatchSize(limit).Apply(r.sdk)
}

// MaxBatchBytes is the current batch size limit.
func (r *Remote) MaxBatchBytes() int64 { return r.maxRead.Load() }

// minMessage is the smallest batch or chunk a refusal shrinks to.
const minMessage = 16 << 10

// shrink halves *size from was after a message-size refusal, once per
// observed size (concurrent refusals of the same size halve it once), and
// tells the caller whose refusal halved it (ctx's Hooks). It reports false
// when the size is already at the floor.
func (r *Remote) shrink(ctx context.Context, size *atomic.Int64, was int64, what string) bool {
	if was <= minMessage {
		return false
	}
	if on := hooksOf(ctx).OnShrink; size.CompareAndSwap(was, max(was/2, minMessage)) && on != nil {
		on(ShrinkEvent{Cache: r.name, URL: r.url, What: what, Size: size.Load()})
	}
	return true
}

// Capabilities calls GetCapabilities.
func (r *Remote) Capabilities(ctx context.Context) (*repb.ServerCapabilities, error) {
	var resp *repb.ServerCapabilities
	err := r.call(ctx, "GetCapabilities", true, func(ctx context.Context) (err error) {
		resp, err = r.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{InstanceName: r.instance})
		return err
	})
	return resp, err
}

// FindMissing returns the digests the cache does not have, each once and
// in the order asked. Large queries are split so no message passes the
// gRPC size limit. A digest the answer names that was not asked about is
// dropped: it is nothing the caller lacks or has to send.
func (r *Remote) FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	if len(ds) == 0 {
		return nil, nil
	}
	var missing []digest.Digest
	err := r.sdkCall(ctx, "FindMissingBlobs", func(ctx context.Context) (err error) {
		missing, err = r.sdk.MissingBlobs(ctx, ds)
		return err
	})
	if err != nil {
		return nil, err
	}
	return onlyAsked(ds, missing), nil
}

// onlyAsked keeps those of answer that ds holds, each once, in ds's order.
func onlyAsked(ds, answer []digest.Digest) []digest.Digest {
	if len(answer) == 0 {
		return nil
	}
	named := make(map[digest.Digest]bool, len(answer))
	for _, d := range answer {
		named[d] = true
	}
	out := answer[:0] // named holds the answer now
	for _, d := range ds {
		if named[d] {
			out = append(out, d)
			delete(named, d)
		}
	}
	return out
}

// errUnanswered is wrapped when a batch answer says nothing of a blob the
// call sent or asked for, or answers for it more than once: the server
// did not say that it stored it, or what it holds. Like a blob refused for
// now, it is asked again under the retry policy.
var errUnanswered = errors.New("the server's answer does not account for it")

// BatchRead reads small blobs in one call as BatchReadEach does, into
// memory of their own: found holds only verified data, missing the
// digests the server said it lacks.
func (r *Remote) BatchRead(ctx context.Context, ds []digest.Digest) (found map[digest.Digest][]byte, missing []digest.Digest, err error) {
	found = make(map[digest.Digest][]byte, len(ds))
	missing, err = r.BatchReadEach(ctx, ds, func(d digest.Digest, data [][]byte) error {
		found[d] = bytes.Join(data, nil)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return found, missing, nil
}

// BatchReadEach reads small blobs in one call whose total size must fit
// MaxBatchBytes and hands each blob found to fn, in no particular order;
// data is valid only until fn returns (it lives in a buffer the next
// download reuses), and an error of fn ends the call with it. Every blob
// is checked against its digest before any is handed on: one that fails
// verification makes the whole call fail with ErrCorrupt. It returns the
// digests the server said it lacks. An answer that leaves a blob out is
// asked for again under the retry policy, then fails naming the blob; one
// for a blob not asked for, or a second one for a blob, is dropped.
//
// A batch the cache refuses as too large is split in two and the cache's
// batch limit halved for the rest of the run; a single blob still too
// large fails with ErrTooLarge (stream it instead).
func (r *Remote) BatchReadEach(ctx context.Context, ds []digest.Digest, fn func(d digest.Digest, data [][]byte) error) (missing []digest.Digest, err error) {
	limit := r.MaxBatchBytes()
	missing, err = r.batchRead(ctx, ds, fn)
	if !errors.Is(err, ErrTooLarge) || len(ds) < 2 || !r.shrink(ctx, &r.maxRead, limit, "batch") {
		return missing, err
	}
	missing = nil
	for _, half := range [][]digest.Digest{ds[:len(ds)/2], ds[len(ds)/2:]} {
		m, err := r.BatchReadEach(ctx, half, fn)
		if err != nil {
			return nil, err
		}
		missing = append(missing, m...)
	}
	return missing, nil
}

// batchReadMethod is what the generated client calls: it is called here
// directly, for its answer to be a heldBatch.
const batchReadMethod = "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs"

func (r *Remote) batchRead(ctx context.Context, ds []digest.Digest, fn func(digest.Digest, [][]byte) error) (missing []digest.Digest, err error) {
	req := &repb.BatchReadBlobsRequest{InstanceName: r.instance}
	room := &inflateRoom{}
	defer room.free()
	for _, d := range ds {
		req.Digests = append(req.Digests, d.ToProto())
		room.size += d.Size
	}
	if r.zstd.streams {
		req.AcceptableCompressors = []repb.Compressor_Value{repb.Compressor_ZSTD}
	}
	resp := &heldBatch{}
	defer resp.free()
	type blob struct {
		d    digest.Digest
		data [][]byte
	}
	var found []blob
	asked := setOf(ds)
	sum := newSummer()
	err = r.call(ctx, "BatchReadBlobs", true, func(ctx context.Context) error {
		found, missing = found[:0], missing[:0]
		room.used = 0
		if err := r.cc.Invoke(ctx, batchReadMethod, req, resp); err != nil {
			return err
		}
		answered := make(map[digest.Digest]bool, len(ds))
		inFrames := false // a blob found is read where it came
		for i := range resp.entries {
			e := &resp.entries[i]
			d := digest.NewFromProtoUnvalidated(e.digest)
			if !asked[d] || answered[d] {
				continue // a blob nobody asked for, or sent twice, is dropped
			}
			answered[d] = true
			switch c := codes.Code(e.status.GetCode()); c {
			case codes.OK:
				data, err := batchEntry(e, d, room)
				if err != nil {
					return err
				}
				if err := sum.check(d, data); err != nil {
					return err
				}
				found = append(found, blob{d, data})
				inFrames = inFrames || e.compressor == repb.Compressor_IDENTITY
			case codes.NotFound:
				missing = append(missing, d)
			default:
				return fmt.Errorf("blob %s: %w", d, status.ErrorProto(e.status))
			}
		}
		for _, d := range ds {
			if !answered[d] {
				// Left out, it is neither given nor said to be missing.
				return fmt.Errorf("blob %s: %w", d, errUnanswered)
			}
		}
		if !inFrames {
			// Every blob was inflated into room: the frames go back
			// now, not once the blobs are stored.
			resp.free()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, b := range found {
		if err := fn(b.d, b.data); err != nil {
			return nil, err
		}
	}
	return missing, nil
}

// summer checks data that lies in pieces against digests, with one hash
// for a batch.
type summer struct {
	h   hash.Hash
	sum [sha256.Size]byte
	hex [2 * sha256.Size]byte
}

func newSummer() *summer { return &summer{h: sha256.New()} }

// check says whether data's pieces are d's content: ErrCorrupt when not.
func (s *summer) check(d digest.Digest, data [][]byte) error {
	s.h.Reset()
	var n int64
	for _, p := range data {
		s.h.Write(p)
		n += int64(len(p))
	}
	hex.Encode(s.hex[:], s.h.Sum(s.sum[:0]))
	if n != d.Size || string(s.hex[:]) != d.Hash {
		return fmt.Errorf("blob %s: %w (got %d bytes hashing to %s)", d, ErrCorrupt, n, s.hex[:])
	}
	return nil
}

// A stream's overall deadline is twice the cache's stall-timeout plus its
// size at minStreamRate: a server that trickles bytes, or takes them a
// trickle at a time, cannot hold a transfer for ever.
const minStreamRate = 100 << 10 // bytes per second

// streamDeadline bounds a ByteStream read or write of n bytes.
func (r *Remote) streamDeadline(n int64) time.Duration {
	return 2*r.stallTimeout() + time.Duration(n/minStreamRate)*time.Second
}

// ErrStalled is wrapped when a stream delivered no bytes for the cache's
// stall-timeout (empty messages do not count).
var ErrStalled = errors.New("the stream stalled")

// localError marks an error of the writer a read feeds: it is not the
// cache's and is never retried.
type localError struct{ err error }

func (e localError) Error() string { return e.err.Error() }
func (e localError) Unwrap() error { return e.err }

// ReadBlob streams one blob through ByteStream into w, as ReadBlobFrom
// does from its first byte.
func (r *Remote) ReadBlob(ctx context.Context, d digest.Digest, w io.Writer) error {
	return r.ReadBlobFrom(ctx, d, 0, w)
}

// ReadBlobFrom streams a blob from byte off on (read_offset) through
// ByteStream into w, resuming at the offset reached after transient
// failures: w holds the bytes before off already, and must check the
// digest (cache.BlobWriter does). The read as a whole is bounded by a
// deadline scaled by the size left, and fails when no byte arrives for
// the cache's stall-timeout; more bytes than the digest's size fail it at
// once. An error writing to w is returned as it is, never retried.
func (r *Remote) ReadBlobFrom(ctx context.Context, d digest.Digest, off int64, w io.Writer) error {
	name, err := r.readName(d)
	if err != nil {
		return r.wrap("ByteStream.Read", err)
	}
	if off < 0 || off > d.Size {
		return r.wrap("ByteStream.Read", fmt.Errorf("read_offset %d outside blob %s", off, d))
	}
	op := "ByteStream.Read " + d.String()
	ctx, cancel := context.WithTimeout(ctx, r.streamDeadline(d.Size-off))
	defer cancel()
	err = r.retry(ctx, op, true, 0, func(ctx context.Context) error { return r.readFrom(ctx, name, d, w, &off) })
	var le localError
	if errors.As(err, &le) {
		return le.err
	}
	return err
}

func (r *Remote) stallTimeout() time.Duration {
	if r.conn.StallTimeout <= 0 {
		return config.DefaultStallTimeout
	}
	return r.conn.StallTimeout
}

// readFrom reads one stream from *off on, advancing it. A compressed
// stream resumes at the same offset: REAPI's read_offset counts
// uncompressed bytes.
func (r *Remote) readFrom(ctx context.Context, name string, d digest.Digest, w io.Writer, off *int64) error {
	stall := r.stallTimeout()
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(stall, func() { cancel(ErrStalled) })
	defer timer.Stop()
	stream, err := r.cc.NewStream(sctx, &grpc.StreamDesc{ServerStreams: true}, readMethod)
	if err != nil {
		return err
	}
	if err := stream.SendMsg(&bsgrpc.ReadRequest{ResourceName: name, ReadOffset: *off}); err != nil {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	src := &recvReader{stream: stream, progress: func() { timer.Reset(stall) }}
	defer src.free()
	dst := boundedWriter{w: w, off: off, limit: d.Size}
	if r.zstd.streams {
		_, err = zstdwire.Copy(dst, src, d.Size-*off)
		switch {
		case errors.Is(err, zstdwire.ErrTooLarge):
			err = fmt.Errorf("%w: the server sent more than the %d bytes its digest says", ErrCorrupt, d.Size)
		case errors.Is(err, zstdwire.ErrCorrupt):
			err = fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
	} else {
		_, err = io.Copy(dst, src)
	}
	if err != nil {
		if errors.Is(context.Cause(sctx), ErrStalled) {
			return fmt.Errorf("%w: no bytes for %s after %d of %d", ErrStalled, stall, *off, d.Size)
		}
		return err
	}
	if *off != d.Size {
		return fmt.Errorf("%w: got %d bytes, want %d", ErrCorrupt, *off, d.Size)
	}
	return nil
}

// readMethod is what the generated client calls: it is called here
// directly, for its answers to be heldReads.
const readMethod = "/google.bytestream.ByteStream/Read"

// recvReader reads a ByteStream Read's messages as one stream of bytes.
// Every message with data counts as progress; empty ones do not. Each
// message's data is read where it arrived (msg holds the frames until the
// next message): the caller frees the reader (free) once done.
type recvReader struct {
	stream grpc.ClientStream
	msg    heldRead
	// rest is what is left of the message's data.
	rest     [][]byte
	progress func()
	// gather is where WriteTo joins a message's pieces.
	gather *[]byte
}

// next waits for a message with data unless some is left.
func (s *recvReader) next() error {
	for len(s.rest) == 0 {
		if err := s.stream.RecvMsg(&s.msg); err != nil {
			return err // io.EOF at the end
		}
		s.rest = s.msg.data
		if len(s.rest) > 0 {
			s.progress()
		}
	}
	return nil
}

func (s *recvReader) Read(p []byte) (int, error) {
	if err := s.next(); err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) && len(s.rest) > 0 {
		k := copy(p[n:], s.rest[0])
		n += k
		if s.rest[0] = s.rest[0][k:]; len(s.rest[0]) == 0 {
			s.rest = s.rest[1:]
		}
	}
	return n, nil
}

// WriteTo hands each message's data to w in one write: as it is when it
// came in one frame, else joined in a buffer kept for the stream (a write
// per frame would cost a system call per 16 KiB). A zstd stream's decoder
// reads the frames themselves (Read).
func (s *recvReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if err := s.next(); err != nil {
			if errors.Is(err, io.EOF) {
				return total, nil
			}
			return total, err
		}
		data := s.rest[0]
		if len(s.rest) > 1 {
			data = s.join()
		}
		s.rest = nil
		n, err := w.Write(data)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}

// join copies what is left of the message into gather.
func (s *recvReader) join() []byte { return joinInto(&s.gather, s.rest) }

// free gives back the message and the gather buffer.
func (s *recvReader) free() {
	s.msg.free()
	if s.gather != nil {
		downloadPool.Put(s.gather)
		s.gather = nil
	}
}

// BatchUpdate uploads small blobs in one call, whatever the server holds;
// their total size must fit MaxBatchBytes (Plan packs them so). A batch the
// cache refuses as too large is split as in BatchRead.
func (r *Remote) BatchUpdate(ctx context.Context, blobs map[digest.Digest][]byte) error {
	limit := r.MaxBatchBytes()
	err := r.batchUpdate(ctx, blobs)
	if !errors.Is(err, ErrTooLarge) || len(blobs) < 2 || !r.shrink(ctx, &r.maxRead, limit, "batch") {
		return err
	}
	ds := slices.Collect(maps.Keys(blobs))
	for _, half := range [][]digest.Digest{ds[:len(ds)/2], ds[len(ds)/2:]} {
		part := make(map[digest.Digest][]byte, len(half))
		for _, d := range half {
			part[d] = blobs[d]
		}
		if err := r.BatchUpdate(ctx, part); err != nil {
			return err
		}
	}
	return nil
}

// batchUpdate uploads blobs in one call. A blob the server refuses for a
// reason worth another attempt (RESOURCE_EXHAUSTED: a server under a quota
// that is full for now; UNAVAILABLE) is sent again, alone with the others
// so refused, under the same retry policy as a failed call: the call
// succeeded, but the blob was not stored. So is a blob the answer does not
// account for (left out, perhaps with a second answer for another blob or
// one for a digest not sent in its place, or answered twice in ways that
// disagree): nothing says it was stored.
// Once the attempts are spent, the error names the blob.
func (r *Remote) batchUpdate(ctx context.Context, blobs map[digest.Digest][]byte) error {
	pending := make(map[digest.Digest]*repb.BatchUpdateBlobsRequest_Request, len(blobs))
	for d, data := range blobs {
		pending[d] = r.updateEntry(d, data)
	}
	return r.call(ctx, "BatchUpdateBlobs", true, func(ctx context.Context) error {
		req := &repb.BatchUpdateBlobsRequest{InstanceName: r.instance, Requests: slices.Collect(maps.Values(pending))}
		resp, err := r.cas.BatchUpdateBlobs(ctx, req)
		if err != nil {
			return err
		}
		answers := make(map[digest.Digest]error, len(pending))
		for _, br := range resp.GetResponses() {
			d := digest.NewFromProtoUnvalidated(br.GetDigest())
			if _, sent := pending[d]; !sent {
				continue // says nothing of the blobs sent
			}
			err := status.ErrorProto(br.GetStatus())
			if prev, twice := answers[d]; twice && (errors.Is(prev, errUnanswered) || status.Code(prev) != status.Code(err)) {
				err = errUnanswered // answers that disagree: which holds?
			}
			answers[d] = err
		}
		var again error
		for d := range pending {
			err, answered := answers[d]
			switch {
			case !answered:
				err = errUnanswered
			case err == nil:
				delete(pending, d)
				continue
			}
			err = fmt.Errorf("blob %s: %w", d, err)
			if !shouldRetry(err, true) {
				return err
			}
			if again == nil {
				again = err
			}
		}
		return again
	})
}

// Bounds on what one GetTree may bring, whatever the server says: no real
// tree comes near them, and a server past them is lying or broken.
const (
	maxTreeDirs  = 1 << 20
	maxTreeBytes = 512 << 20
)

// ErrBadTree is wrapped when a GetTree answer cannot be a real tree: a page
// token repeated, a page with nothing but a token, or more Directories or
// bytes than any tree has. Callers read the tree another way.
var ErrBadTree = errors.New("not a tree")

// GetTree returns every Directory under root, root first, following pages.
// Servers without GetTree answer UNIMPLEMENTED. The pages, Directories and
// bytes one tree may bring are bounded (ErrBadTree past them).
func (r *Remote) GetTree(ctx context.Context, root digest.Digest) ([]*repb.Directory, error) {
	var dirs []*repb.Directory
	err := r.call(ctx, "GetTree "+root.String(), true, func(ctx context.Context) error {
		dirs = dirs[:0]
		var bytes int
		tokens := map[string]bool{}
		pageToken := ""
		for {
			stream, err := r.cas.GetTree(ctx, &repb.GetTreeRequest{InstanceName: r.instance, RootDigest: root.ToProto(), PageToken: pageToken})
			if err != nil {
				return err
			}
			next, got := "", 0
			for {
				resp, err := stream.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					return err
				}
				for _, d := range resp.GetDirectories() {
					bytes += proto.Size(d)
				}
				got += len(resp.GetDirectories())
				dirs = append(dirs, resp.GetDirectories()...)
				if len(dirs) > maxTreeDirs || bytes > maxTreeBytes {
					return fmt.Errorf("%w: over %d Directories or %d bytes", ErrBadTree, maxTreeDirs, maxTreeBytes)
				}
				next = resp.GetNextPageToken()
			}
			switch {
			case next == "":
				return nil
			case tokens[next]:
				return fmt.Errorf("%w: the server repeated page token %q", ErrBadTree, next)
			case got == 0:
				return fmt.Errorf("%w: a page with no Directories and a next page token", ErrBadTree)
			}
			tokens[next] = true
			pageToken = next
		}
	})
	return dirs, err
}

// GetReference asks ReferenceStorage for a ref's root Directory digest.
func (r *Remote) GetReference(ctx context.Context, ref string) (digest.Digest, error) {
	var resp *bspb.GetReferenceResponse
	op := "GetReference " + ref
	err := r.call(ctx, op, true, func(ctx context.Context) (err error) {
		resp, err = r.refs.GetReference(ctx, &bspb.GetReferenceRequest{InstanceName: r.instance, Key: ref})
		return err
	})
	if err != nil {
		return digest.Digest{}, err
	}
	d, err := digest.NewFromProto(resp.GetDigest())
	if err != nil {
		return digest.Digest{}, r.wrap(op, fmt.Errorf("server returned an invalid digest: %w", err))
	}
	return d, nil
}

// UpdateReference points refs at d through ReferenceStorage.
func (r *Remote) UpdateReference(ctx context.Context, refs []string, d digest.Digest) error {
	return r.call(ctx, fmt.Sprintf("UpdateReference %v", refs), true, func(ctx context.Context) error {
		_, err := r.refs.UpdateReference(ctx, &bspb.UpdateReferenceRequest{InstanceName: r.instance, Keys: refs, Digest: d.ToProto()})
		return err
	})
}

// ReferenceStatus asks ReferenceStorage whether it accepts updates.
func (r *Remote) ReferenceStatus(ctx context.Context) (allowUpdates bool, err error) {
	err = r.call(ctx, "ReferenceStorage.Status", true, func(ctx context.Context) error {
		resp, err := r.refs.Status(ctx, &bspb.StatusRequest{InstanceName: r.instance})
		allowUpdates = resp.GetAllowUpdates()
		return err
	})
	return allowUpdates, err
}

// FetchDirectory resolves a Remote Asset URI to a root Directory digest.
func (r *Remote) FetchDirectory(ctx context.Context, uri string) (digest.Digest, error) {
	op := "FetchDirectory " + uri
	var resp *assetpb.FetchDirectoryResponse
	err := r.call(ctx, op, true, func(ctx context.Context) (err error) {
		resp, err = r.fetch.FetchDirectory(ctx, &assetpb.FetchDirectoryRequest{InstanceName: r.instance, Uris: []string{uri}})
		return err
	})
	if err != nil {
		return digest.Digest{}, err
	}
	if err := r.assetStatus(op, resp.GetStatus()); err != nil {
		return digest.Digest{}, err
	}
	d, err := digest.NewFromProto(resp.GetRootDirectoryDigest())
	if err != nil {
		return digest.Digest{}, r.wrap(op, fmt.Errorf("server returned an invalid digest: %w", err))
	}
	return d, nil
}

// FetchBlob resolves a Remote Asset URI to a blob digest.
func (r *Remote) FetchBlob(ctx context.Context, uri string) (digest.Digest, error) {
	op := "FetchBlob " + uri
	var resp *assetpb.FetchBlobResponse
	err := r.call(ctx, op, true, func(ctx context.Context) (err error) {
		resp, err = r.fetch.FetchBlob(ctx, &assetpb.FetchBlobRequest{InstanceName: r.instance, Uris: []string{uri}})
		return err
	})
	if err != nil {
		return digest.Digest{}, err
	}
	if err := r.assetStatus(op, resp.GetStatus()); err != nil {
		return digest.Digest{}, err
	}
	d, err := digest.NewFromProto(resp.GetBlobDigest())
	if err != nil {
		return digest.Digest{}, r.wrap(op, fmt.Errorf("server returned an invalid digest: %w", err))
	}
	return d, nil
}

// assetStatus maps the status a Fetch response carries: a successful RPC
// can still say NOT_FOUND.
func (r *Remote) assetStatus(op string, st interface {
	GetCode() int32
	GetMessage() string
}) error {
	if st == nil || codes.Code(st.GetCode()) == codes.OK {
		return nil
	}
	if codes.Code(st.GetCode()) == codes.NotFound {
		return r.notFound(op, st.GetMessage())
	}
	return r.wrap(op, status.Error(codes.Code(st.GetCode()), st.GetMessage()))
}

// PushDirectory records uris → root in the Remote Asset index: one asset
// under every URI given.
func (r *Remote) PushDirectory(ctx context.Context, uris []string, root digest.Digest) error {
	return r.call(ctx, "PushDirectory "+strings.Join(uris, " "), true, func(ctx context.Context) error {
		_, err := r.pushRA.PushDirectory(ctx, &assetpb.PushDirectoryRequest{
			InstanceName: r.instance, Uris: uris, RootDirectoryDigest: root.ToProto(),
		})
		return err
	})
}

// PushBlob records uris → blob in the Remote Asset index, naming the blobs
// and directories the asset refers to so the server can keep them.
func (r *Remote) PushBlob(ctx context.Context, uris []string, blob digest.Digest, refBlobs, refDirs []digest.Digest) error {
	req := &assetpb.PushBlobRequest{InstanceName: r.instance, Uris: uris, BlobDigest: blob.ToProto()}
	for _, d := range refBlobs {
		req.ReferencesBlobs = append(req.ReferencesBlobs, d.ToProto())
	}
	for _, d := range refDirs {
		req.ReferencesDirectories = append(req.ReferencesDirectories, d.ToProto())
	}
	return r.call(ctx, "PushBlob "+strings.Join(uris, " "), true, func(ctx context.Context) error {
		_, err := r.pushRA.PushBlob(ctx, req)
		return err
	})
}

func setOf(ds []digest.Digest) map[digest.Digest]bool {
	m := make(map[digest.Digest]bool, len(ds))
	for _, d := range ds {
		m[d] = true
	}
	return m
}
