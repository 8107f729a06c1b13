package server

import (
	"context"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// GetReference returns the root Directory a BuildStream 1 ref names: the
// same refs Remote Asset serves as urn:fdc:buildstream.build:2020:v1:REF.
// A ref whose tree is incomplete is NOT_FOUND, as with bst-artifact-server.
func (s *Server) GetReference(ctx context.Context, req *bspb.GetReferenceRequest) (*bspb.GetReferenceResponse, error) {
	if err := s.checkInstance(req.GetInstanceName()); err != nil {
		return nil, err
	}
	if err := cache.ValidateRef(req.GetKey()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	_, d, err := s.lookup(ctx, assetDirectory, []string{buildstream.URNBst1Artifact + req.GetKey()}, nil, timeOf(nil))
	if err != nil {
		return nil, err
	}
	return &bspb.GetReferenceResponse{Digest: d.ToProto()}, nil
}

// UpdateReference points BuildStream 1 refs at a Directory whose whole tree
// is in the store.
func (s *Server) UpdateReference(ctx context.Context, req *bspb.UpdateReferenceRequest) (*bspb.UpdateReferenceResponse, error) {
	if err := s.checkWrite(); err != nil {
		return nil, err
	}
	if err := s.checkInstance(req.GetInstanceName()); err != nil {
		return nil, err
	}
	if len(req.GetKeys()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no keys in the request")
	}
	root, err := parseDigest(req.GetDigest())
	if err != nil {
		return nil, err
	}
	uris := make([]string, len(req.GetKeys()))
	for i, k := range req.GetKeys() {
		if err := cache.ValidateRef(k); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		uris[i] = buildstream.URNBst1Artifact + k
	}
	data := buildstream.V1RefContent(root)
	err = s.writeEntries(ctx, assetDirectory, uris, nil, cache.Roots{Dirs: []digest.Digest{root}}, func(string, entry) ([]byte, error) {
		return data, nil
	})
	if err != nil {
		return nil, err
	}
	return &bspb.UpdateReferenceResponse{}, nil
}

// Status tells BuildStream 1 whether pushes are accepted.
func (s *Server) Status(_ context.Context, req *bspb.StatusRequest) (*bspb.StatusResponse, error) {
	if err := s.checkInstance(req.GetInstanceName()); err != nil {
		return nil, err
	}
	return &bspb.StatusResponse{AllowUpdates: s.allowWrites}, nil
}
