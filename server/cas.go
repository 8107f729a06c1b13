package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/bazelbuild/remote-apis/build/bazel/semver"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
)

// MaxBatchBytes is the max_batch_total_size_bytes the server advertises and
// enforces on batch calls.
const MaxBatchBytes = 4<<20 - 64<<10

// CAS serves ContentAddressableStorage and Capabilities from a store.
type CAS struct {
	repb.UnimplementedContentAddressableStorageServer
	repb.UnimplementedCapabilitiesServer
	store       *cache.Store
	allowWrites bool
}

// NewCAS serves store; allowWrites enables BatchUpdateBlobs. Clients never
// upload the empty blob (REAPI treats it as always present), so the store
// is given it here: BuildStream checks empty files out by hard link to it.
func NewCAS(store *cache.Store, allowWrites bool) (*CAS, error) {
	if err := store.PutBytes(digest.NewFromBlob(nil), nil); err != nil {
		return nil, fmt.Errorf("storing the empty blob: %w", err)
	}
	return &CAS{store: store, allowWrites: allowWrites}, nil
}

// parseDigest validates a digest from a request.
func parseDigest(d *repb.Digest) (digest.Digest, error) {
	dg, err := digest.NewFromProto(d)
	if err != nil {
		return digest.Digest{}, status.Errorf(codes.InvalidArgument, "invalid digest %s/%d: %v", d.GetHash(), d.GetSizeBytes(), err)
	}
	return dg, nil
}

// GetCapabilities advertises SHA-256 CAS with the server's batch limit.
func (s *CAS) GetCapabilities(context.Context, *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	return &repb.ServerCapabilities{
		CacheCapabilities: &repb.CacheCapabilities{
			DigestFunctions:               []repb.DigestFunction_Value{repb.DigestFunction_SHA256},
			MaxBatchTotalSizeBytes:        MaxBatchBytes,
			SymlinkAbsolutePathStrategy:   repb.SymlinkAbsolutePathStrategy_ALLOWED,
			ActionCacheUpdateCapabilities: &repb.ActionCacheUpdateCapabilities{UpdateEnabled: false},
		},
		LowApiVersion:  &semver.SemVer{Major: 2},
		HighApiVersion: &semver.SemVer{Major: 2},
	}, nil
}

// FindMissingBlobs reports the digests the store lacks.
func (s *CAS) FindMissingBlobs(_ context.Context, req *repb.FindMissingBlobsRequest) (*repb.FindMissingBlobsResponse, error) {
	resp := &repb.FindMissingBlobsResponse{}
	for _, d := range req.GetBlobDigests() {
		dg, err := parseDigest(d)
		if err != nil {
			return nil, err
		}
		ok, err := s.store.Has(dg)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "checking %s: %v", dg, err)
		}
		if !ok {
			resp.MissingBlobDigests = append(resp.MissingBlobDigests, d)
		}
	}
	return resp, nil
}

// BatchReadBlobs returns small blobs, each verified before it is sent.
func (s *CAS) BatchReadBlobs(_ context.Context, req *repb.BatchReadBlobsRequest) (*repb.BatchReadBlobsResponse, error) {
	var total int64
	for _, d := range req.GetDigests() {
		total += d.GetSizeBytes()
	}
	if total > MaxBatchBytes {
		return nil, status.Errorf(codes.InvalidArgument, "batch of %d bytes exceeds the limit of %d", total, MaxBatchBytes)
	}
	resp := &repb.BatchReadBlobsResponse{}
	for _, d := range req.GetDigests() {
		r := &repb.BatchReadBlobsResponse_Response{Digest: d, Status: &spb.Status{}}
		dg, err := parseDigest(d)
		if err == nil {
			r.Data, err = s.store.ReadBlob(dg)
		}
		r.Status = blobStatus(err)
		resp.Responses = append(resp.Responses, r)
	}
	return resp, nil
}

// BatchUpdateBlobs stores small blobs whose data matches their digests.
func (s *CAS) BatchUpdateBlobs(_ context.Context, req *repb.BatchUpdateBlobsRequest) (*repb.BatchUpdateBlobsResponse, error) {
	if !s.allowWrites {
		return nil, status.Error(codes.PermissionDenied, "this server does not accept pushes (start it with --enable-push)")
	}
	var total int64
	for _, r := range req.GetRequests() {
		total += int64(len(r.GetData()))
	}
	if total > MaxBatchBytes {
		return nil, status.Errorf(codes.InvalidArgument, "batch of %d bytes exceeds the limit of %d", total, MaxBatchBytes)
	}
	resp := &repb.BatchUpdateBlobsResponse{}
	for _, r := range req.GetRequests() {
		dg, err := parseDigest(r.GetDigest())
		if err == nil {
			err = s.store.PutBytes(dg, r.GetData())
		}
		resp.Responses = append(resp.Responses, &repb.BatchUpdateBlobsResponse_Response{Digest: r.GetDigest(), Status: blobStatus(err)})
	}
	return resp, nil
}

// blobStatus maps a store error to a per-blob status.
func blobStatus(err error) *spb.Status {
	code := codes.OK
	switch {
	case err == nil:
	case errors.Is(err, cache.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, cache.ErrDigestMismatch), status.Code(err) == codes.InvalidArgument:
		code = codes.InvalidArgument
	default:
		code = codes.Internal
	}
	if code == codes.OK {
		return &spb.Status{}
	}
	return &spb.Status{Code: int32(code), Message: fmt.Sprint(err)}
}
