package server

import (
	"context"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	lspb "github.com/bst-cache/bst-cache/protos/bstcache/v1"
)

// maxListPage is the most refs one ListRefs response carries.
const maxListPage = 1000

// listing serves bst-cache's own RefListing service: what a store holds,
// for `bst-cache ls --cache`.
type listing struct {
	*Server
	lspb.UnimplementedRefListingServer
}

// ListRefs returns refs of one kind in name order, after the page token
// (the last name of the previous page, so a page never repeats or skips a
// ref that stays), under the prefix.
func (l listing) ListRefs(_ context.Context, req *lspb.ListRefsRequest) (*lspb.ListRefsResponse, error) {
	if err := l.checkInstance(req.GetInstanceName()); err != nil {
		return nil, err
	}
	kind := cache.Kind(req.GetKind())
	switch kind {
	case cache.KindBst1Artifact, cache.KindBst2Artifact, cache.KindSource:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "kind %q: want bst1-artifact, bst2-artifact or source", req.GetKind())
	}
	size := int(req.GetPageSize())
	if size <= 0 || size > maxListPage {
		size = maxListPage
	}
	prefix := strings.TrimSuffix(req.GetPrefix(), "/")
	infos, err := l.store.ListRefs(kind, "")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "listing refs: %v", err)
	}
	resp := &lspb.ListRefsResponse{}
	for _, info := range infos {
		if info.Name <= req.GetPageToken() || prefix != "" && info.Name != prefix && !strings.HasPrefix(info.Name, prefix+"/") {
			continue
		}
		if len(resp.Refs) == size {
			resp.NextPageToken = resp.Refs[size-1].Name
			break
		}
		ref := &lspb.Ref{Name: info.Name, Modified: info.Modified.Unix()}
		if data, err := l.store.GetRef(kind, info.Name); err == nil {
			if d, err := buildstream.RefDigest(kind == cache.KindBst1Artifact, data); err == nil {
				ref.Digest = d.String()
			}
		}
		resp.Refs = append(resp.Refs, ref)
	}
	return resp, nil
}
