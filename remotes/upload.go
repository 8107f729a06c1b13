package remotes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"
	bspb "google.golang.org/genproto/googleapis/bytestream"
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
			if err := r.WriteBlob(gctx, d, open); err != nil {
				return err
			}
			sent.Add(d.Size)
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
					if err := r.WriteBlob(gctx, d, open); err != nil {
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

// WriteBlob streams one blob through ByteStream Write in chunks, starting
// again from the beginning if a retryable error breaks the stream. A
// server that already has the blob may end the stream early. A chunk the
// cache refuses as too large halves the chunk size for the rest of the run
// and the stream starts again.
func (r *Remote) WriteBlob(ctx context.Context, d digest.Digest, open Opener) error {
	for {
		chunk := r.chunk.Load()
		err := r.writeBlob(ctx, d, open, chunk)
		if !errors.Is(err, ErrTooLarge) || !r.shrink(&r.chunk, chunk, "chunk") {
			return err
		}
	}
}

func (r *Remote) writeBlob(ctx context.Context, d digest.Digest, open Opener, chunk int64) error {
	op := "ByteStream.Write " + d.String()
	return r.call(ctx, op, true, func(ctx context.Context) error {
		name, err := r.sdk.ResourceNameWrite(d.Hash, d.Size)
		if err != nil {
			return err
		}
		rc, err := open(d)
		if err != nil {
			return err
		}
		defer rc.Close()
		stream, err := bspb.NewByteStreamClient(r.cc).Write(ctx)
		if err != nil {
			return err
		}
		var off int64
		for {
			// A fresh buffer per message: gRPC may still hold the last.
			buf := make([]byte, min(chunk, d.Size-off))
			n, err := io.ReadFull(rc, buf)
			if err != nil && n < len(buf) {
				return fmt.Errorf("reading blob %s: %w", d, err)
			}
			last := off+int64(n) == d.Size
			if last {
				if extra, _ := rc.Read(make([]byte, 1)); extra > 0 {
					// The stream is cancelled unfinished: nothing is committed.
					return fmt.Errorf("reading blob %s: longer than its digest says", d)
				}
			}
			req := &bspb.WriteRequest{WriteOffset: off, Data: buf, FinishWrite: last}
			if off == 0 {
				req.ResourceName = name
			}
			off += int64(n)
			if err := stream.Send(req); err != nil {
				if errors.Is(err, io.EOF) {
					break // the server ended the stream: its status follows
				}
				return err
			}
			if req.FinishWrite {
				break
			}
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			return err
		}
		if resp.GetCommittedSize() != d.Size {
			return fmt.Errorf("the server committed %d bytes of %d", resp.GetCommittedSize(), d.Size)
		}
		return nil
	})
}

// MemoryOpener serves blobs held in memory, for uploads of content that is
// not in a store.
func MemoryOpener(blobs map[digest.Digest][]byte) Opener {
	return func(d digest.Digest) (io.ReadCloser, error) {
		b, ok := blobs[d]
		if !ok {
			return nil, fmt.Errorf("blob %s: not in memory", d)
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
}
