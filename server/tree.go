package server

import (
	"errors"
	"strconv"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
)

// defaultTreePage is the page size when the client sets none.
const defaultTreePage = 1000

// GetTree streams the Directories of a tree, breadth first, in pages. A
// page token is the position of the page's first Directory in that order,
// so a client can resume anywhere. Parts of the tree the store lacks (and,
// with an upstream, no upstream has) are left out, as REAPI specifies; a
// root it lacks is NOT_FOUND.
func (s *Server) GetTree(req *repb.GetTreeRequest, stream repb.ContentAddressableStorage_GetTreeServer) error {
	if err := s.checkInstance(req.GetInstanceName()); err != nil {
		return err
	}
	root, err := parseDigest(req.GetRootDigest())
	if err != nil {
		return err
	}
	start := 0
	if tok := req.GetPageToken(); tok != "" {
		if start, err = strconv.Atoi(tok); err != nil || start < 0 {
			return status.Errorf(codes.InvalidArgument, "invalid page_token %q", tok)
		}
	}
	pageSize := int(req.GetPageSize())
	if pageSize <= 0 || pageSize > defaultTreePage {
		pageSize = defaultTreePage
	}
	w := cache.NewWalk(cache.Roots{Dirs: []digest.Digest{root}})
	var page []*repb.Directory
	var pageBytes int64
	pos := 0
	fromUpstream := false // from then on, Directories may be new: accounted
	for level := w.Next(); len(level) > 0; level = w.Next() {
		for _, d := range level {
			data, err := s.store.ReadBlob(d)
			switch {
			case !errors.Is(err, cache.ErrNotFound) || s.upstream == nil:
			case d == emptyDigest:
				// The empty Directory is known without asking: every
				// bst-cache client's probe asks for its tree, and an
				// upstream that hangs must not stall the probe, nor a
				// fill of it give a new store its layout.
				data, err = nil, nil
			default:
				data, err = s.fillTree(stream.Context(), d)
				fromUpstream = true
			}
			if errors.Is(err, cache.ErrNotFound) && d == root && pos == 0 {
				return status.Errorf(codes.NotFound, "tree root %s not found", root)
			}
			if errors.Is(err, cache.ErrNotFound) {
				continue
			}
			if err != nil {
				return grpcError(err)
			}
			if fromUpstream {
				s.filled([]digest.Digest{d})
			}
			dir, err := w.Add(d, data)
			if err != nil {
				return status.Errorf(codes.InvalidArgument, "%s is not a valid Directory: %v", d, err)
			}
			if pos++; pos <= start {
				continue
			}
			if len(page) == pageSize || pageBytes+int64(len(data)) > s.maxBatch {
				if err := s.sendTree(stream, page, pageBytes, strconv.Itoa(pos-1)); err != nil {
					return err
				}
				page, pageBytes = nil, 0
			}
			page = append(page, dir)
			pageBytes += int64(len(data))
		}
	}
	return s.sendTree(stream, page, pageBytes, "")
}

// sendTree sends a page of Directories (bytes of them, as stored) and
// counts them as blob bytes sent.
func (s *Server) sendTree(stream repb.ContentAddressableStorage_GetTreeServer, page []*repb.Directory, bytes int64, next string) error {
	if err := stream.Send(&repb.GetTreeResponse{Directories: page, NextPageToken: next}); err != nil {
		return err
	}
	s.count.moved(Out, Identity, bytes, bytes)
	return nil
}
