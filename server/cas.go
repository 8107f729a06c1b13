package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/bazelbuild/remote-apis/build/bazel/semver"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/zstdwire"
)

// GetCapabilities advertises SHA-256 CAS with the server's batch limit,
// and zstd for ByteStream and batches.
func (s *Server) GetCapabilities(_ context.Context, req *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	if err := s.checkInstance(req.GetInstanceName()); err != nil {
		return nil, err
	}
	return &repb.ServerCapabilities{
		CacheCapabilities: &repb.CacheCapabilities{
			DigestFunctions:                 []repb.DigestFunction_Value{repb.DigestFunction_SHA256},
			MaxBatchTotalSizeBytes:          s.maxBatch,
			SupportedCompressors:            []repb.Compressor_Value{repb.Compressor_ZSTD},
			SupportedBatchUpdateCompressors: []repb.Compressor_Value{repb.Compressor_ZSTD},
			SymlinkAbsolutePathStrategy:     repb.SymlinkAbsolutePathStrategy_ALLOWED,
			ActionCacheUpdateCapabilities:   &repb.ActionCacheUpdateCapabilities{UpdateEnabled: false},
		},
		LowApiVersion:  &semver.SemVer{Major: 2},
		HighApiVersion: &semver.SemVer{Major: 2},
	}, nil
}

// FindMissingBlobs reports the digests the store lacks. Blobs found are
// marked as used, so that eviction spares what a client is about to name.
// With an upstream, a blob an upstream holds is not missing: it is filled
// when it is read or named.
func (s *Server) FindMissingBlobs(ctx context.Context, req *repb.FindMissingBlobsRequest) (*repb.FindMissingBlobsResponse, error) {
	if err := s.checkInstance(req.GetInstanceName()); err != nil {
		return nil, err
	}
	ds := make([]digest.Digest, len(req.GetBlobDigests()))
	for i, d := range req.GetBlobDigests() {
		ds[i] = digest.NewFromProtoUnvalidated(d) // Present checks them
	}
	present, err := s.store.Present(ds)
	if err != nil {
		for _, d := range req.GetBlobDigests() {
			if _, err := parseDigest(d); err != nil {
				return nil, err // which digest, and why
			}
		}
		return nil, status.Errorf(codes.Internal, "checking blobs: %v", err)
	}
	var missing []digest.Digest
	resp := &repb.FindMissingBlobsResponse{}
	found := ds[:0] // in place: ds[i] is read before found[len(found)] is written
	for i, dg := range ds {
		if !present[i] {
			missing = append(missing, dg)
			// The client's own digest, as it came: no copy per blob.
			resp.MissingBlobDigests = append(resp.MissingBlobDigests, req.GetBlobDigests()[i])
		} else {
			found = append(found, dg)
		}
	}
	s.touch(found...)
	if up, uctx := s.upstreamFor(ctx); len(missing) > 0 && up != nil {
		var err error
		if missing, err = up.Missing(uctx, missing); err != nil {
			return nil, status.FromContextError(err).Err()
		}
		resp.MissingBlobDigests = resp.MissingBlobDigests[:0]
		for _, d := range missing {
			resp.MissingBlobDigests = append(resp.MissingBlobDigests, d.ToProto())
		}
	}
	return resp, nil
}

// checkBatch enforces the batch limit on a total size.
func (s *Server) checkBatch(total int64) error {
	if total > s.maxBatch {
		return status.Errorf(codes.InvalidArgument, "batch of %d bytes exceeds the limit of %d (max_batch_total_size_bytes); use ByteStream for large blobs", total, s.maxBatch)
	}
	return nil
}

// BatchReadBlobs returns small blobs, each verified before it is sent.
func (s *Server) BatchReadBlobs(ctx context.Context, req *repb.BatchReadBlobsRequest) (*repb.BatchReadBlobsResponse, error) {
	if err := s.checkInstance(req.GetInstanceName()); err != nil {
		return nil, err
	}
	var total int64
	for _, d := range req.GetDigests() {
		if d.GetSizeBytes() < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "invalid digest %s/%d: negative size", d.GetHash(), d.GetSizeBytes())
		}
		total += d.GetSizeBytes()
		if err := s.checkBatch(total); err != nil {
			return nil, err
		}
	}
	if err := s.fillBatch(ctx, req.GetDigests()); err != nil {
		return nil, err
	}
	zstd := slices.Contains(req.GetAcceptableCompressors(), repb.Compressor_ZSTD)
	ds := make([]digest.Digest, len(req.GetDigests()))
	errs := make([]error, len(ds))
	for i, d := range req.GetDigests() {
		ds[i], errs[i] = parseDigest(d)
	}
	// What the store surely lacks is answered without opening a file.
	absent := s.store.Absent(ds)
	resp := &repb.BatchReadBlobsResponse{Responses: make([]*repb.BatchReadBlobsResponse_Response, len(ds))}
	for i, d := range req.GetDigests() {
		r := &repb.BatchReadBlobsResponse_Response{Digest: d}
		dg, err := ds[i], errs[i]
		switch {
		case err != nil:
		case absent[i]:
			err = cache.ErrNotFound
		default:
			r.Data, err = s.store.ReadBlob(dg)
			if errors.Is(err, cache.ErrDigestMismatch) {
				s.logf("corrupt object %s in the store: %v", dg, err)
				err = status.Errorf(codes.DataLoss, "blob %s is corrupt on the server", dg)
			}
		}
		if err == nil || errors.Is(err, cache.ErrNotFound) {
			s.count.looked(LookupBlob, err == nil)
		}
		if err == nil {
			n, enc := int64(len(r.Data)), Identity
			if zstd {
				if z, ok := zstdwire.CompressEntry(r.Data); ok {
					r.Data, r.Compressor, enc = z, repb.Compressor_ZSTD, Zstd
				}
			}
			s.count.moved(Out, enc, n, int64(len(r.Data)))
		}
		if errors.Is(err, cache.ErrNotFound) {
			// The entry names the digest: no message formatted per blob.
			r.Status = &spb.Status{Code: int32(codes.NotFound), Message: "not found on the server"}
		} else {
			r.Status = blobStatus(err)
		}
		resp.Responses[i] = r
	}
	return resp, nil
}

// BatchUpdateBlobs stores small blobs whose data matches their digests.
// Those the store lacks are admitted under the quota together (putBatch):
// a batch waits for room once, not once a blob.
func (s *Server) BatchUpdateBlobs(ctx context.Context, req *repb.BatchUpdateBlobsRequest) (*repb.BatchUpdateBlobsResponse, error) {
	if err := s.checkWrite(); err != nil {
		return nil, err
	}
	if err := s.checkInstance(req.GetInstanceName()); err != nil {
		return nil, err
	}
	// Both what came and what it inflates to must fit the limit: a
	// compressed entry is inflated in memory.
	var total, inflated int64
	for _, r := range req.GetRequests() {
		total += int64(len(r.GetData()))
		if r.GetCompressor() != repb.Compressor_IDENTITY {
			inflated += max(r.GetDigest().GetSizeBytes(), 0)
		}
	}
	if err := s.checkBatch(max(total, inflated)); err != nil {
		return nil, err
	}
	reqs := req.GetRequests()
	blobs := make([]batchBlob, len(reqs))
	firstOf := make(map[digest.Digest]int, len(reqs))
	var fresh []int
	for i, r := range reqs {
		b := &blobs[i]
		b.first = i
		b.d, b.err = parseDigest(r.GetDigest())
		if b.err == nil {
			b.data, b.err = inflate(r, b.d)
		}
		if b.err != nil {
			continue
		}
		s.count.moved(In, encodingOf(r.GetCompressor()), int64(len(b.data)), int64(len(r.GetData())))
		// Wrong data is wrong whether or not the server has the blob.
		if got := digest.NewFromBlob(b.data); got != b.d {
			b.err = status.Errorf(codes.InvalidArgument, "data for %s hashes to %s", b.d, got)
			continue
		}
		if j, ok := firstOf[b.d]; ok {
			b.first = j // sent twice: stored once
			continue
		}
		firstOf[b.d] = i
		if ok, err := s.store.Has(b.d); err == nil && ok {
			s.touch(b.d)
			continue
		}
		fresh = append(fresh, i)
	}
	s.putBatch(ctx, blobs, fresh)
	resp := &repb.BatchUpdateBlobsResponse{Responses: make([]*repb.BatchUpdateBlobsResponse_Response, len(reqs))}
	for i, r := range reqs {
		err := blobs[i].err
		if err == nil {
			err = blobs[blobs[i].first].err
		}
		resp.Responses[i] = &repb.BatchUpdateBlobsResponse_Response{Digest: r.GetDigest(), Status: blobStatus(err)}
	}
	return resp, nil
}

// batchBlob is one entry of a batch upload: its blob, checked, and what
// became of it.
type batchBlob struct {
	d     digest.Digest
	data  []byte
	err   error
	first int // the entry that came first with the same digest (its own index if none)
}

// putBatch stores the blobs of a batch upload the store lacks (fresh,
// indexes in blobs), setting the err of those it could not, and accounts
// for them as uploads of the client ctx is a call of. Under a quota they
// are admitted together, as one reservation (in parts of at most a tenth
// of the quota, the room eviction leaves below the limit, so that no part
// is too large ever to fit), and the parts share one wait for room: a
// batch on a full store waits admitWait once, not once a blob.
func (s *Server) putBatch(ctx context.Context, blobs []batchBlob, fresh []int) {
	client := clientOf(ctx)
	var until time.Time
	for len(fresh) > 0 {
		n, size := 1, blobs[fresh[0]].d.Size
		for ; n < len(fresh) && (s.quota == nil || size+blobs[fresh[n]].d.Size <= s.quota.limit/10); n++ {
			size += blobs[fresh[n]].d.Size
		}
		part := fresh[:n]
		fresh = fresh[n:]
		var res *reservation
		if s.quota != nil {
			var err error
			if res, err = s.quota.admit(ctx, size, 0, client, &until); err != nil {
				for _, i := range part {
					blobs[i].err = err
				}
				continue
			}
		}
		for _, i := range part {
			b := &blobs[i]
			if b.err = s.store.PutBytes(b.d, b.data); b.err == nil {
				s.stored(b.d, client)
			}
			if res != nil {
				res.settle(b.d.Size) // stored (accounted) or failed
			}
		}
	}
}

// encodingOf is the Encoding a batch entry's compressor names.
func encodingOf(c repb.Compressor_Value) Encoding {
	if c == repb.Compressor_ZSTD {
		return Zstd
	}
	return Identity
}

// inflate is the data of one BatchUpdateBlobs entry, decompressed when the
// client compressed it and bounded by its digest's size.
func inflate(r *repb.BatchUpdateBlobsRequest_Request, d digest.Digest) ([]byte, error) {
	data, err := zstdwire.Inflate(r.GetCompressor(), r.GetData(), d.Size)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "blob %s: %v (supported_batch_update_compressors: ZSTD)", d, err)
	}
	return data, nil
}

// blobStatus maps an error to a per-blob status.
func blobStatus(err error) *spb.Status {
	if err == nil {
		return &spb.Status{}
	}
	return status.Convert(grpcError(err)).Proto()
}

// grpcError maps a store error to a gRPC error; gRPC errors pass through.
func grpcError(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, cache.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, cache.ErrDigestMismatch), errors.Is(err, cache.ErrInvalidRef):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, cache.ErrNoSpace), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return status.Error(codes.ResourceExhausted, "the server is out of space: "+err.Error())
	}
	return status.Error(codes.Internal, fmt.Sprint(err))
}
