package remotes_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/config"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
	"github.com/bst-cache/bst-cache/remotes"
)

// No server that installs here answers Remote Asset fetches with a status
// in the response, or fails on demand, so these behaviours are checked
// against small in-process servers.

type fakeAsset struct {
	assetpb.UnimplementedFetchServer
	repb.UnimplementedCapabilitiesServer
}

func (fakeAsset) GetCapabilities(context.Context, *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	return &repb.ServerCapabilities{}, nil
}

func (fakeAsset) FetchDirectory(_ context.Context, req *assetpb.FetchDirectoryRequest) (*assetpb.FetchDirectoryResponse, error) {
	if len(req.GetUris()) == 0 {
		return nil, grpcstatus.Error(codes.InvalidArgument, "no uris")
	}
	// A successful RPC whose status says NOT_FOUND, as bazel-remote answers.
	return &assetpb.FetchDirectoryResponse{Status: &status.Status{Code: int32(codes.NotFound), Message: "no such asset"}}, nil
}

func (fakeAsset) FetchBlob(context.Context, *assetpb.FetchBlobRequest) (*assetpb.FetchBlobResponse, error) {
	return &assetpb.FetchBlobResponse{Status: &status.Status{Code: int32(codes.PermissionDenied), Message: "nope"}}, nil
}

// startFake serves fakeAsset on loopback.
func startFake(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	assetpb.RegisterFetchServer(s, fakeAsset{})
	repb.RegisterCapabilitiesServer(s, fakeAsset{})
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return "http://" + l.Addr().String()
}

func TestAssetStatusInResponse(t *testing.T) {
	r := dial(t, cacheConfig("asset", startFake(t), config.TypeIndex))
	_, err := r.FetchDirectory(context.Background(), "urn:fdc:buildstream.build:2020:v1:demo/x/y")
	if !errors.Is(err, remotes.ErrNotFound) {
		t.Errorf("FetchDirectory with NOT_FOUND in the response = %v; want ErrNotFound", err)
	}
	_, err = r.FetchBlob(context.Background(), "urn:fdc:buildstream.build:2020:artifact:demo/x/y")
	var re *remotes.Error
	if !errors.As(err, &re) || re.Code != codes.PermissionDenied || errors.Is(err, remotes.ErrNotFound) {
		t.Errorf("FetchBlob with PERMISSION_DENIED in the response = %v", err)
	}
	if res := probe(t, r, config.TypeIndex); !res.Caps.RemoteAssetFetch {
		t.Errorf("probe: Remote Asset fetch not detected: %+v", res)
	}
}

// flakyRefs fails GetReference with the given codes in turn, then answers.
type flakyRefs struct {
	bspb.UnimplementedReferenceStorageServer
	mu    sync.Mutex
	fails []codes.Code
	calls int
}

func (f *flakyRefs) GetReference(context.Context, *bspb.GetReferenceRequest) (*bspb.GetReferenceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if len(f.fails) > 0 {
		c := f.fails[0]
		f.fails = f.fails[1:]
		return nil, grpcstatus.Error(c, "injected")
	}
	return &bspb.GetReferenceResponse{Digest: digest.NewFromBlob([]byte("root")).ToProto()}, nil
}

func TestRetryPolicy(t *testing.T) {
	tests := []struct {
		name      string
		fails     []codes.Code
		wantCalls int
		wantErr   codes.Code
	}{
		{"unavailable is retried", []codes.Code{codes.Unavailable, codes.Unavailable}, 3, codes.OK},
		{"resource exhausted is retried", []codes.Code{codes.ResourceExhausted}, 2, codes.OK},
		{"retry limit", []codes.Code{codes.Unavailable, codes.Unavailable, codes.Unavailable, codes.Unavailable}, 3, codes.Unavailable},
		{"invalid argument is not retried", []codes.Code{codes.InvalidArgument}, 1, codes.InvalidArgument},
		{"permission denied is not retried", []codes.Code{codes.PermissionDenied}, 1, codes.PermissionDenied},
		{"not found is a miss at once", []codes.Code{codes.NotFound}, 1, codes.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer()
			fake := &flakyRefs{fails: tc.fails}
			bspb.RegisterReferenceStorageServer(srv, fake)
			go srv.Serve(l)
			defer srv.Stop()

			c := cacheConfig("flaky", "http://"+l.Addr().String(), config.TypeIndex)
			c.Connection.RetryLimit = 2
			var events []remotes.RetryEvent
			r, err := remotes.Dial(context.Background(), c)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			ctx := remotes.WithHooks(context.Background(), remotes.Hooks{OnRetry: func(e remotes.RetryEvent) { events = append(events, e) }})
			_, err = r.GetReference(ctx, "p/e/k")
			var re *remotes.Error
			gotCode := codes.OK
			if errors.As(err, &re) {
				gotCode = re.Code
			}
			if gotCode != tc.wantErr || fake.calls != tc.wantCalls || len(events) != tc.wantCalls-1 {
				t.Errorf("err %v, %d calls, %d retry events; want %s, %d calls", err, fake.calls, len(events), tc.wantErr, tc.wantCalls)
			}
			if tc.wantErr == codes.NotFound && !errors.Is(err, remotes.ErrNotFound) {
				t.Errorf("NOT_FOUND does not match ErrNotFound: %v", err)
			}
		})
	}
}
