package remotes

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/internal/zstdwire"
)

// writeChunk is the data carried by one ByteStream WriteRequest at first.
// It leaves room for the message's framing (resource name, offset, tags:
// a full 1 MiB of data is 1,048,706 bytes on the wire), so a request fits a
// peer's 1 MiB receive limit.
const writeChunk = 1<<20 - 4<<10

// Opener opens a blob's content for upload. Upload may open a blob more
// than once (a retried stream starts again).
type Opener func(digest.Digest) (io.ReadCloser, error)

// Upload sends whichever of ds the cache lacks, reading each through open:
// small blobs packed into BatchUpdateBlobs calls, large ones streamed
// through ByteStream in chunks, at most jobs calls at a time (and never more
// than the cache's concurrency). Only the blobs in one call are held in
// memory. The empty blob is sent like any other when the cache reports it
// missing (bst-artifact-server cannot serve a tree with an empty file
// without it). It returns what it sent and the bytes.
func (r *Remote) Upload(ctx context.Context, ds []digest.Digest, open Opener, jobs int) ([]digest.Digest, int64, error) {
	missing, err := r.FindMissing(ctx, ds)
	if err != nil {
		return nil, 0, err
	}
	sent, err := r.Send(ctx, missing, open, jobs)
	if err != nil {
		return nil, 0, err
	}
	return missing, sent, nil
}

// Send sends missing, which the caller knows the cache lacks, as Upload does,
// and returns the bytes sent.
func (r *Remote) Send(ctx context.Context, missing []digest.Digest, open Opener, jobs int) (int64, error) {
	var sent atomic.Int64
	batches, streamed := r.Plan(missing)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(jobs, 1))
	for _, d := range streamed {
		g.Go(func() error {
			n, err := r.WriteBlob(gctx, d, open)
			if err != nil {
				return err
			}
			sent.Add(n)
			return nil
		})
	}
	for _, b := range batches {
		g.Go(func() error {
			blobs := make(map[digest.Digest][]byte, len(b))
			var size int64
			for _, d := range b {
				data, err := readAll(d, open)
				if err != nil {
					return err
				}
				blobs[d] = data
				size += d.Size
			}
			err := r.BatchUpdate(gctx, blobs)
			if errors.Is(err, ErrTooLarge) {
				// One blob too large for any batch the cache takes.
				for _, d := range b {
					if _, err := r.WriteBlob(gctx, d, open); err != nil {
						return err
					}
				}
				err = nil
			}
			if err != nil {
				return err
			}
			sent.Add(size)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return sent.Load(), nil
}

// readAll reads a whole blob, which must still have the size its digest
// names.
func readAll(d digest.Digest, open Opener) ([]byte, error) {
	rc, err := open(d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data := make([]byte, d.Size)
	if _, err := io.ReadFull(rc, data); err != nil {
		return nil, fmt.Errorf("reading blob %s: %w", d, err)
	}
	if n, _ := rc.Read(make([]byte, 1)); n > 0 {
		return nil, fmt.Errorf("reading blob %s: longer than its digest says", d)
	}
	return data, nil
}

// WriteBlob streams one blob through ByteStream Write in chunks. The
// write is bounded as a read is, not by the request timeout: it fails when
// no chunk goes out for the cache's stall-timeout, and as a whole past a
// deadline scaled by the blob's size. A stream that breaks off is retried
// under the same resource name from the bytes the server says it holds
// (QueryWriteStatus); a server that cannot say, or says 0, gets the blob
// again from the start. With an upload key (WithUploadKey), the name is
// the same in the next run too, so an upload interrupted by Ctrl-C or a
// kill resumes there. A server that already has the blob may end the
// stream early, or say so in QueryWriteStatus. A chunk the cache refuses
// as too large halves the chunk size for the rest of the run and the
// stream starts again. It returns the blob's bytes sent by the stream
// that finished it: none when QueryWriteStatus said the server had the
// blob, fewer than its size after a resume.
func (r *Remote) WriteBlob(ctx context.Context, d digest.Digest, open Opener) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, r.streamDeadline(d.Size))
	defer cancel()
	id, derived := r.uploadID(d)
	for {
		chunk := r.chunk.Load()
		n, err := r.writeBlob(ctx, d, open, id, derived, chunk)
		var re *Error
		if derived && errors.As(err, &re) && re.Code == codes.Aborted {
			// Another client of this store writes the same upload now:
			// this one goes under a name of its own.
			id, derived = uuid.NewString(), false
			continue
		}
		if !errors.Is(err, ErrTooLarge) || !r.shrink(ctx, &r.chunk, chunk, "chunk") {
			return n, err
		}
	}
}

// uploadID is the upload UUID of a blob's ByteStream resource name:
// derived from the upload key and the digest when there is a key, so the
// next run finds the same upload, else random.
func (r *Remote) uploadID(d digest.Digest) (id string, derived bool) {
	if r.uploadKey == "" {
		return uuid.NewString(), false
	}
	// Shaped as a version 4 (random) UUID: bst-artifact-server refuses
	// uploads under any other version.
	sum := sha256.Sum256([]byte(r.uploadKey + "/" + d.String()))
	var u uuid.UUID
	copy(u[:], sum[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u.String(), true
}

func (r *Remote) writeBlob(ctx context.Context, d digest.Digest, open Opener, id string, derived bool, chunk int64) (sent int64, err error) {
	op := "ByteStream.Write " + d.String()
	// A first attempt under a random name has nothing to resume.
	resume := derived
	err = r.retry(ctx, op, true, 0, func(ctx context.Context) error {
		sent = 0
		defer func() { resume = true }()
		rc, err := open(d)
		if err != nil {
			return err
		}
		defer rc.Close()
		src := bufio.NewReaderSize(rc, zstdwire.SampleBytes)
		head, _ := src.Peek(int(min(d.Size, zstdwire.SampleBytes)))
		compressed := r.compressUpload(head)
		name, err := r.writeName(id, d, compressed)
		if err != nil {
			return err
		}
		var off int64
		sent = d.Size
		if resume {
			var done bool
			if off, done, err = r.committed(ctx, name, d, compressed); err != nil || done {
				sent = 0
				return err
			}
			sent = d.Size - off
			if err := skip(rc, src, off); err != nil {
				return fmt.Errorf("reading blob %s: %w", d, err)
			}
		}
		stall := r.stallTimeout()
		sctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		timer := time.AfterFunc(stall, func() { cancel(ErrStalled) })
		defer timer.Stop()
		stream, err := bspb.NewByteStreamClient(r.cc).Write(sctx)
		if err != nil {
			return err
		}
		send := &sender{stream: stream, name: name, chunk: chunk, off: off, progress: func() { timer.Reset(stall) }}
		if compressed {
			err = send.compressed(src, d)
		} else {
			err = send.plain(src, d)
		}
		if err != nil && !errors.Is(err, errServerDone) {
			// The stream is cancelled unfinished: the server keeps what
			// it took, or nothing.
			return r.stalled(sctx, err, stall, send.off, d)
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			return r.stalled(sctx, err, stall, send.off, d)
		}
		switch got := resp.GetCommittedSize(); {
		case got == d.Size:
		case compressed && (got == -1 || got == send.off):
			// A compressed upload counts compressed bytes, and -1 means
			// the server already had the blob.
		default:
			return fmt.Errorf("the server committed %d bytes of %d", got, d.Size)
		}
		return nil
	})
	return sent, err
}

// stalled says that a stream failed for want of progress, when it did.
func (r *Remote) stalled(sctx context.Context, err error, stall time.Duration, off int64, d digest.Digest) error {
	if errors.Is(context.Cause(sctx), ErrStalled) {
		return fmt.Errorf("%w: no progress for %s after %d of %d bytes", ErrStalled, stall, off, d.Size)
	}
	return err
}

// committed asks the server how much of an upload it holds
// (QueryWriteStatus): done when it has the whole blob, else the offset a
// plain upload goes on from. A compressed upload counts compressed bytes,
// which a new encoder would not reproduce: it starts again. A server
// without QueryWriteStatus, or that knows nothing of the upload, gets the
// blob from the start; one that cannot answer now is retried.
func (r *Remote) committed(ctx context.Context, name string, d digest.Digest, compressed bool) (off int64, done bool, err error) {
	if r.noQueryWrite.Load() {
		return 0, false, nil
	}
	if r.conn.RequestTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.conn.RequestTimeout)
		defer cancel()
	}
	resp, err := bspb.NewByteStreamClient(r.cc).QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
	switch {
	case status.Code(err) == codes.Unimplemented:
		r.noQueryWrite.Store(true)
		return 0, false, nil
	case err != nil && shouldRetry(err, true):
		return 0, false, err
	case err != nil:
		return 0, false, nil // NOT_FOUND (no such upload) or a refusal: start again
	case resp.GetComplete():
		return 0, true, nil
	case compressed || resp.GetCommittedSize() < 0 || resp.GetCommittedSize() > d.Size:
		return 0, false, nil
	}
	return resp.GetCommittedSize(), false, nil
}

// skip moves src, which reads rc through a buffer, to byte off: by
// seeking when rc can, else by reading through.
func skip(rc io.Reader, src *bufio.Reader, off int64) error {
	if off == 0 {
		return nil
	}
	if s, ok := rc.(io.Seeker); ok {
		if _, err := s.Seek(off, io.SeekStart); err != nil {
			return err
		}
		src.Reset(rc)
		return nil
	}
	_, err := src.Discard(int(off))
	return err
}

// errServerDone is a sender's signal that the server ended the stream
// early (it has the blob): its status follows in CloseAndRecv.
var errServerDone = errors.New("the server ended the stream")

// sender sends a blob's bytes as ByteStream WriteRequests of at most chunk
// bytes, the resource name in the first and finish_write in the last.
type sender struct {
	stream bspb.ByteStream_WriteClient
	name   string
	chunk  int64
	off    int64 // the write offset: compressed bytes for a compressed upload
	named  bool  // the resource name went out in the first message
	buf    []byte
	err    error // the first failure to send
	// progress is called after each message goes out.
	progress func()
}

func (s *sender) send(data []byte, last bool) error {
	req := &bspb.WriteRequest{WriteOffset: s.off, Data: data, FinishWrite: last}
	if !s.named {
		req.ResourceName, s.named = s.name, true
	}
	s.off += int64(len(data))
	if err := s.stream.Send(req); err != nil {
		if errors.Is(err, io.EOF) {
			err = errServerDone
		}
		s.err = err
		return err
	}
	s.progress()
	return nil
}

// plain sends the blob as it is.
func (s *sender) plain(rc io.Reader, d digest.Digest) error {
	for {
		// A fresh buffer per message: gRPC may still hold the last.
		buf := make([]byte, min(s.chunk, d.Size-s.off))
		n, err := io.ReadFull(rc, buf)
		if err != nil && n < len(buf) {
			return fmt.Errorf("reading blob %s: %w", d, err)
		}
		last := s.off+int64(n) == d.Size
		if last {
			if extra, _ := rc.Read(make([]byte, 1)); extra > 0 {
				return fmt.Errorf("reading blob %s: longer than its digest says", d)
			}
		}
		if err := s.send(buf, last); err != nil || last {
			return err
		}
	}
}

// compressed sends the blob as one zstd frame. Its length is checked
// against the digest before the last message, so a blob that changed on
// disk is never committed.
func (s *sender) compressed(rc io.Reader, d digest.Digest) error {
	zw := zstdwire.NewWriter(s)
	n, err := io.Copy(zw, io.LimitReader(rc, d.Size+1))
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	switch {
	case s.err != nil:
		return s.err // the stream's own error (or errServerDone)
	case err != nil:
		return fmt.Errorf("reading blob %s: %w", d, err)
	case n > d.Size:
		return fmt.Errorf("reading blob %s: longer than its digest says", d)
	case n < d.Size:
		return fmt.Errorf("reading blob %s: %d bytes, its digest says %d", d, n, d.Size)
	}
	last := s.buf
	s.buf = nil
	return s.send(last, true)
}

// Write takes compressed bytes and sends them in full chunks; the rest
// waits for the last message.
func (s *sender) Write(p []byte) (int, error) {
	s.buf = append(s.buf, p...)
	for int64(len(s.buf)) >= s.chunk {
		// A fresh slice per message: gRPC may still hold the last.
		msg := bytes.Clone(s.buf[:s.chunk])
		s.buf = append(s.buf[:0], s.buf[s.chunk:]...)
		if err := s.send(msg, false); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}
