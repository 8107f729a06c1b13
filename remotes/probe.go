package remotes

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/config"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// Capabilities is what a probe learnt about a cache.
type Capabilities struct {
	CAS              bool     `json:"cas"`
	BatchRead        bool     `json:"batch_read"`
	BatchUpdate      bool     `json:"batch_update"`
	GetTree          bool     `json:"get_tree"`
	RemoteAssetFetch bool     `json:"remote_asset_fetch"`
	RemoteAssetPush  bool     `json:"remote_asset_push"`
	ReferenceStorage bool     `json:"reference_storage"`
	AllowUpdates     bool     `json:"allow_updates"`
	PushAllowed      Push     `json:"push_allowed"`
	MaxBatchBytes    int64    `json:"max_batch_bytes"`
	Compressors      []string `json:"compressors"`
	// Compressed is true when blobs travel zstd-compressed (the cache
	// advertises it and its compression setting is not "off").
	Compressed bool `json:"compressed"`
}

// Push says whether the cache takes pushes for the configured instance.
type Push string

// The push verdicts. An empty request proves only that a service exists:
// Buildbarn accepts empty BatchUpdateBlobs and PushDirectory probes and
// refuses real pushes per instance. So "yes" needs the server's explicit
// answer for the instance (ReferenceStorage's allow_updates); "no" a
// refusal or a missing service; anything else is "unknown".
const (
	PushYes     Push = "yes"
	PushNo      Push = "no"
	PushUnknown Push = "unknown"
)

// Status of a probed cache.
const (
	StatusOK          = "ok"
	StatusUnreachable = "unreachable"
	StatusError       = "error"
	StatusUnchecked   = "unchecked"
)

// ProbeResult is the outcome of Probe.
type ProbeResult struct {
	Status string
	Err    error
	// Warning is set when the cache works but does not fit its configured
	// type, e.g. a CAS-only server configured as type "all".
	Warning string
	Caps    Capabilities
}

// Probe asks a cache what it supports, the way BuildStream 1.6 does:
// GetCapabilities (UNIMPLEMENTED tolerated), an empty BatchReadBlobs, an
// empty FetchDirectory (INVALID_ARGUMENT means Remote Asset is there,
// UNIMPLEMENTED that it is not), an empty BatchUpdateBlobs and an empty
// PushDirectory (likewise), then ReferenceStorage's Status. It also tries
// GetTree on the empty Directory. Probe calls are not retried: ctx should
// carry a short deadline. Probe applies the server's batch limit to r.
func Probe(ctx context.Context, r *Remote, typ config.Type) ProbeResult {
	res := ProbeResult{Caps: Capabilities{Compressors: []string{}}}
	caps := &res.Caps
	fail := func(err error) ProbeResult {
		res.Err = r.wrap("probe", err)
		res.Status = StatusError
		var re *Error
		if errors.As(res.Err, &re) && re.Unreachable() {
			res.Status = StatusUnreachable
			if r.plaintextToTLS(err) {
				re.Hint = "this server speaks TLS: use https://"
			}
		}
		return res
	}

	sc, err := r.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{InstanceName: r.instance})
	switch status.Code(err) {
	case codes.OK:
		cc := sc.GetCacheCapabilities()
		caps.MaxBatchBytes = cc.GetMaxBatchTotalSizeBytes()
		for _, c := range cc.GetSupportedCompressors() {
			caps.Compressors = append(caps.Compressors, c.String())
		}
		r.setCompression(cc)
		caps.Compressed = r.Compressed()
	case codes.Unimplemented:
	default:
		return fail(err)
	}
	r.SetMaxBatchBytes(caps.MaxBatchBytes)

	// CAS: bst 1.6 reads an empty BatchReadBlobs.
	_, err = r.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{InstanceName: r.instance})
	if caps.BatchRead, err = supported(err, codes.OK); err != nil {
		return fail(err)
	}
	_, err = r.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{InstanceName: r.instance})
	if caps.CAS, err = supported(err, codes.OK); err != nil {
		return fail(err)
	}
	_, err = r.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{InstanceName: r.instance})
	if caps.BatchUpdate, err = supported(err, codes.OK); err != nil {
		return fail(err)
	}

	empty := digest.NewFromBlob(nil)
	if stream, err := r.cas.GetTree(ctx, &repb.GetTreeRequest{InstanceName: r.instance, RootDigest: empty.ToProto()}); err == nil {
		_, err = stream.Recv()
		// Any answer but UNIMPLEMENTED (a tree, NOT_FOUND, a refusal of the
		// empty digest) shows the call exists.
		caps.GetTree = status.Code(err) != codes.Unimplemented
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fail(ctx.Err())
		}
	}

	_, err = r.fetch.FetchDirectory(ctx, &assetpb.FetchDirectoryRequest{InstanceName: r.instance})
	if caps.RemoteAssetFetch, err = supported(err, codes.InvalidArgument); err != nil {
		return fail(err)
	}
	_, err = r.pushRA.PushDirectory(ctx, &assetpb.PushDirectoryRequest{InstanceName: r.instance})
	if caps.RemoteAssetPush, err = supported(err, codes.InvalidArgument); err != nil {
		return fail(err)
	}
	allow, err := r.refs.Status(ctx, &bspb.StatusRequest{InstanceName: r.instance})
	if caps.ReferenceStorage, err = supported(err, codes.OK); err != nil {
		return fail(err)
	}
	caps.AllowUpdates = caps.ReferenceStorage && allow.GetAllowUpdates()

	caps.PushAllowed = pushVerdict(caps, typ)

	res.Status = StatusOK
	if typ.HasStorage() && !caps.CAS {
		res.Warning = fmt.Sprintf("type %q needs CAS, which the server does not offer; set type = \"index\"", typ)
	} else if typ.HasIndex() && !caps.RemoteAssetFetch && !caps.ReferenceStorage {
		res.Warning = fmt.Sprintf("type %q needs an artifact index (Remote Asset or ReferenceStorage), which the server does not offer; set type = \"storage\"", typ)
	}
	return res
}

// pushVerdict reads what the probe learnt about pushes for a cache type.
func pushVerdict(caps *Capabilities, typ config.Type) Push {
	noIndex := !caps.RemoteAssetPush && !caps.AllowUpdates
	switch {
	case typ.HasIndex() && noIndex, typ.HasStorage() && !caps.BatchUpdate:
		return PushNo
	case typ.HasIndex() && caps.AllowUpdates:
		// ReferenceStorage answered for this instance; bst-artifact-server
		// and serve govern CAS writes by the same switch.
		return PushYes
	}
	return PushUnknown
}

// supported reads a probe answer: ok is the code that means "supported";
// UNIMPLEMENTED and PERMISSION_DENIED mean "not here", anything else is a
// failure of the probe itself.
func supported(err error, ok codes.Code) (bool, error) {
	switch c := status.Code(err); c {
	case ok:
		return true, nil
	case codes.OK, codes.InvalidArgument, codes.NotFound:
		// Answered, though not with the expected code: the service exists.
		return true, nil
	case codes.Unimplemented, codes.PermissionDenied:
		return false, nil
	}
	return false, err
}

// plaintextToTLS tells whether a plaintext connection failed because the
// server speaks TLS: gRPC then reads no HTTP/2 preface, and a TLS
// handshake with the server goes through (its certificate unchecked: this
// only finds out what it speaks).
func (r *Remote) plaintextToTLS(err error) bool {
	if r.tls || !strings.Contains(err.Error(), "server preface") || strings.HasPrefix(r.target, "unix") {
		return false
	}
	conn, herr := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", r.target, &tls.Config{InsecureSkipVerify: true})
	if herr == nil {
		conn.Close()
		return true
	}
	var rh tls.RecordHeaderError
	return !errors.As(herr, &rh) && strings.Contains(herr.Error(), "tls:")
}
