package server

import (
	"context"
	"encoding/json"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
)

// fetch serves the Remote Asset Fetch service from the index; the server
// never downloads from the URIs themselves.
type fetch struct {
	*Server
}

// push serves the Remote Asset Push service.
type push struct {
	*Server
}

// FetchDirectory answers with the root Directory of the first URI the index
// holds completely. An empty request is INVALID_ARGUMENT, which is how
// BuildStream 1.6 learns that the server speaks Remote Asset.
func (f fetch) FetchDirectory(ctx context.Context, req *assetpb.FetchDirectoryRequest) (*assetpb.FetchDirectoryResponse, error) {
	if err := f.checkInstance(req.GetInstanceName()); err != nil {
		return nil, err
	}
	uri, d, err := f.lookup(ctx, assetDirectory, req.GetUris(), req.GetQualifiers(), timeOf(req.GetOldestContentAccepted()))
	if err != nil {
		return nil, err
	}
	return &assetpb.FetchDirectoryResponse{
		Status: &spb.Status{}, Uri: uri, Qualifiers: req.GetQualifiers(), RootDirectoryDigest: d.ToProto(),
	}, nil
}

// FetchBlob answers with the blob of the first URI the index holds
// completely.
func (f fetch) FetchBlob(ctx context.Context, req *assetpb.FetchBlobRequest) (*assetpb.FetchBlobResponse, error) {
	if err := f.checkInstance(req.GetInstanceName()); err != nil {
		return nil, err
	}
	uri, d, err := f.lookup(ctx, assetBlob, req.GetUris(), req.GetQualifiers(), timeOf(req.GetOldestContentAccepted()))
	if err != nil {
		return nil, err
	}
	return &assetpb.FetchBlobResponse{
		Status: &spb.Status{}, Uri: uri, Qualifiers: req.GetQualifiers(), BlobDigest: d.ToProto(),
	}, nil
}

// PushDirectory records uris as naming a Directory tree, once the whole
// tree and every reference is in the store.
func (p push) PushDirectory(ctx context.Context, req *assetpb.PushDirectoryRequest) (*assetpb.PushDirectoryResponse, error) {
	if err := p.checkPush(req.GetInstanceName(), req.GetUris()); err != nil {
		return nil, err
	}
	root, err := parseDigest(req.GetRootDirectoryDigest())
	if err != nil {
		return nil, err
	}
	roots, err := referenceRoots(req.GetReferencesBlobs(), req.GetReferencesDirectories())
	if err != nil {
		return nil, err
	}
	rec := newRecord(assetDirectory, root, req.GetQualifiers(), roots, timeOf(req.GetExpireAt()))
	roots.Dirs = append(roots.Dirs, root)
	err = p.writeEntries(ctx, assetDirectory, req.GetUris(), req.GetQualifiers(), roots, func(uri string, e entry) ([]byte, error) {
		if e.kind == cache.KindBst1Artifact {
			return buildstream.V1RefContent(root), nil
		}
		return rec.forURI(uri)
	})
	if err != nil {
		return nil, err
	}
	return &assetpb.PushDirectoryResponse{}, nil
}

// PushBlob records uris as naming a blob. For BuildStream 2 artifacts and
// sources the blob is the Artifact or Source proto: it is stored in
// BuildStream's layout and everything it names must be present.
func (p push) PushBlob(ctx context.Context, req *assetpb.PushBlobRequest) (*assetpb.PushBlobResponse, error) {
	if err := p.checkPush(req.GetInstanceName(), req.GetUris()); err != nil {
		return nil, err
	}
	blob, err := parseDigest(req.GetBlobDigest())
	if err != nil {
		return nil, err
	}
	roots, err := referenceRoots(req.GetReferencesBlobs(), req.GetReferencesDirectories())
	if err != nil {
		return nil, err
	}
	rec := newRecord(assetBlob, blob, req.GetQualifiers(), roots, timeOf(req.GetExpireAt()))
	roots.Blobs = append(roots.Blobs, blob)
	var data []byte // the blob, read when a BuildStream URN needs it
	for _, uri := range req.GetUris() {
		e, err := entryFor(assetBlob, uri, req.GetQualifiers())
		if err != nil {
			return nil, err
		}
		if e.kind == cache.KindAsset || data != nil {
			continue
		}
		if err := p.fillClosure(ctx, cache.Roots{Blobs: []digest.Digest{blob}}); err != nil {
			return nil, status.Errorf(codes.Unavailable, "filling %s from upstream: %v", blob, err)
		}
		if data, err = p.store.ReadBlob(blob); err != nil {
			if status.Code(grpcError(err)) == codes.NotFound {
				return nil, missingError(uri, []digest.Digest{blob})
			}
			return nil, grpcError(err)
		}
		n, err := buildstream.ReadRef(e.kind, data)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%s: %v", uri, err)
		}
		// BuildStream 2's optional trees (buildtree and the like) may be
		// absent, as they are after a pull without buildtrees: they are
		// not required, so a reference to one missing is dropped.
		roots.Dirs = dropMissingOptional(p.store, roots.Dirs, n.Optional.Dirs)
		roots.Add(n.Required)
	}
	err = p.writeEntries(ctx, assetBlob, req.GetUris(), req.GetQualifiers(), roots, func(uri string, e entry) ([]byte, error) {
		if e.kind == cache.KindAsset {
			return rec.forURI(uri)
		}
		return data, nil
	})
	if err != nil {
		return nil, err
	}
	return &assetpb.PushBlobResponse{}, nil
}

// checkPush refuses a push the server cannot take: writes disabled, an
// unknown instance, no URIs (how BuildStream 1.6 probes for support).
func (p push) checkPush(instance string, uris []string) error {
	if err := p.checkWrite(); err != nil {
		return err
	}
	if err := p.checkInstance(instance); err != nil {
		return err
	}
	if len(uris) == 0 {
		return status.Error(codes.InvalidArgument, "no uris in the request")
	}
	return nil
}

// dropMissingOptional removes from dirs those optional trees whose root the
// store does not hold.
func dropMissingOptional(s *cache.Store, dirs, optional []digest.Digest) []digest.Digest {
	skip := map[digest.Digest]bool{}
	for _, d := range optional {
		if ok, err := s.Has(d); err == nil && !ok {
			skip[d] = true
		}
	}
	out := dirs[:0:0]
	for _, d := range dirs {
		if !skip[d] {
			out = append(out, d)
		}
	}
	return out
}

// referenceRoots validates a push's references.
func referenceRoots(blobs, dirs []*repb.Digest) (cache.Roots, error) {
	var r cache.Roots
	for _, d := range blobs {
		dg, err := parseDigest(d)
		if err != nil {
			return r, err
		}
		r.Blobs = append(r.Blobs, dg)
	}
	for _, d := range dirs {
		dg, err := parseDigest(d)
		if err != nil {
			return r, err
		}
		r.Dirs = append(r.Dirs, dg)
	}
	return r, nil
}

// newRecord builds the generic index record of a push.
func newRecord(typ assetType, d digest.Digest, qualifiers []*assetpb.Qualifier, refs cache.Roots, expire time.Time) record {
	rec := record{Type: typ, Digest: d.String(), RefBlobs: digestStrings(refs.Blobs), RefDirs: digestStrings(refs.Dirs)}
	if len(qualifiers) > 0 {
		rec.Qualifiers = map[string]string{}
		for _, q := range qualifiers {
			rec.Qualifiers[q.GetName()] = q.GetValue()
		}
	}
	if !expire.IsZero() {
		rec.ExpireAtUnixS = expire.Unix()
	}
	return rec
}

// forURI is the record's JSON for one of the pushed URIs.
func (r record) forURI(uri string) ([]byte, error) {
	r.URI = uri
	return json.Marshal(r)
}

// timeOf converts an optional timestamp; unset is the zero time.
func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}
