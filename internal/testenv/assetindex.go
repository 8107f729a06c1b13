package testenv

import (
	"context"
	"net"
	"sync"
	"testing"

	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// AssetIndex stands for Buildbarn's bb_remote_asset: a Remote Asset index
// kept apart from any CAS. It records what it is pushed without checking
// that the blobs exist, and answers fetches from that record whatever the
// CAS holds, so its entries and the CAS evict independently, as on
// Buildbarn. No such server installs here, so the tests run this one.
type AssetIndex struct {
	Addr string
	// Unknown is how a fetch of an unknown URI is answered: NOT_FOUND in
	// the response status by default; PERMISSION_DENIED or UNIMPLEMENTED
	// as the RPC's code, as bb_remote_asset does without an "error"
	// fetcher (it would try to fetch the URI itself).
	Unknown codes.Code

	mu      sync.Mutex
	entries map[string]*repb.Digest
}

// StartAssetIndex serves an AssetIndex on loopback until the test ends.
func StartAssetIndex(t testing.TB, unknown codes.Code) *AssetIndex {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &AssetIndex{Addr: l.Addr().String(), Unknown: unknown, entries: map[string]*repb.Digest{}}
	s := grpc.NewServer()
	assetpb.RegisterFetchServer(s, assetFetch{a})
	assetpb.RegisterPushServer(s, assetPush{a})
	repb.RegisterCapabilitiesServer(s, assetCaps{})
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return a
}

// URL is the index's plaintext URL for a cache config.
func (a *AssetIndex) URL() string { return "http://" + a.Addr }

// Set records uri -> d, as a push from another client would.
func (a *AssetIndex) Set(uri string, d *repb.Digest) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.entries[uri] = d
}

// Len is how many URIs the index records.
func (a *AssetIndex) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.entries)
}

// Entries are what the index records, URI by URI: a copy.
func (a *AssetIndex) Entries() map[string]*repb.Digest {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]*repb.Digest, len(a.entries))
	for u, d := range a.entries {
		out[u] = d
	}
	return out
}

func (a *AssetIndex) get(uris []string) (*repb.Digest, error) {
	if len(uris) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no uris")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, u := range uris {
		if d, ok := a.entries[u]; ok {
			return d, nil
		}
	}
	if a.Unknown != codes.NotFound && a.Unknown != codes.OK {
		return nil, status.Errorf(a.Unknown, "no fetcher can fetch %v", uris)
	}
	return nil, nil
}

func (a *AssetIndex) put(uris []string, d *repb.Digest) error {
	if len(uris) == 0 || d == nil {
		return status.Error(codes.InvalidArgument, "no uris or no digest")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, u := range uris {
		a.entries[u] = d
	}
	return nil
}

type assetFetch struct{ a *AssetIndex }

var notFound = &spb.Status{Code: int32(codes.NotFound), Message: "not in the index"}

func (f assetFetch) FetchBlob(_ context.Context, req *assetpb.FetchBlobRequest) (*assetpb.FetchBlobResponse, error) {
	d, err := f.a.get(req.GetUris())
	if err != nil || d == nil {
		return &assetpb.FetchBlobResponse{Status: notFound}, err
	}
	return &assetpb.FetchBlobResponse{Status: &spb.Status{}, Uri: req.GetUris()[0], BlobDigest: d}, nil
}

func (f assetFetch) FetchDirectory(_ context.Context, req *assetpb.FetchDirectoryRequest) (*assetpb.FetchDirectoryResponse, error) {
	d, err := f.a.get(req.GetUris())
	if err != nil || d == nil {
		return &assetpb.FetchDirectoryResponse{Status: notFound}, err
	}
	return &assetpb.FetchDirectoryResponse{Status: &spb.Status{}, Uri: req.GetUris()[0], RootDirectoryDigest: d}, nil
}

type assetPush struct{ a *AssetIndex }

func (p assetPush) PushBlob(_ context.Context, req *assetpb.PushBlobRequest) (*assetpb.PushBlobResponse, error) {
	return &assetpb.PushBlobResponse{}, p.a.put(req.GetUris(), req.GetBlobDigest())
}

func (p assetPush) PushDirectory(_ context.Context, req *assetpb.PushDirectoryRequest) (*assetpb.PushDirectoryResponse, error) {
	return &assetpb.PushDirectoryResponse{}, p.a.put(req.GetUris(), req.GetRootDirectoryDigest())
}

type assetCaps struct{}

func (assetCaps) GetCapabilities(context.Context, *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	return &repb.ServerCapabilities{}, nil
}
