package server

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"strconv"
	"strings"
	"time"

	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/internal/tokenfile"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// GRPCOptions configure the gRPC server around a Server.
type GRPCOptions struct {
	// TLS, when set, serves TLS (with client certificate checks if it
	// says so).
	TLS *tls.Config
	// Token, when set, is required as "authorization: Bearer TOKEN" on
	// every call; the file is read again when it changes, and only its
	// current token is accepted.
	Token *tokenfile.File
	// MaxMessageBytes bounds received and sent messages
	// (DefaultMaxMessageBytes when zero).
	MaxMessageBytes int
	// OnCall, each in turn, hear of every call once it ended, refused
	// ones (a bad token) included: the access log, the -v lines. Each
	// runs on the call's goroutine, before the client has the answer's
	// status: keep them quick.
	OnCall []func(*Call)
	// Health, when set, is served as grpc.health.v1.Health.
	Health *Health
}

// Call is what the server knows of one RPC once it ended.
type Call struct {
	Start    time.Time
	Duration time.Duration
	// Peer is the client's address.
	Peer string
	// Method is the full gRPC method, "/package.Service/Method".
	Method string
	// Instance is the instance name the request named ("" for the
	// default, or when the call was refused before one was read).
	Instance string
	Code     codes.Code
	// Message is the status message of a failed call.
	Message string
	// BytesIn and BytesOut are the sizes of the messages received and
	// sent, summed over a stream's messages.
	BytesIn, BytesOut int64
	// Refs are the index keys a call named (GetReference's key,
	// UpdateReference's keys, Remote Asset URIs), the first MaxCallRefs
	// of them; RefCount counts them all.
	Refs     []string
	RefCount int
	// Asked and Missing are FindMissingBlobs' digests asked about and
	// reported missing.
	Asked, Missing int
	// Tool, ToolVersion and Invocation come from the REAPI
	// RequestMetadata the client sent, if any.
	Tool, ToolVersion, Invocation string
}

// MaxCallRefs bounds the refs or URIs a Call keeps.
const MaxCallRefs = 8

// requestMetadataKey is REAPI's RequestMetadata header.
const requestMetadataKey = "build.bazel.remote.execution.v2.requestmetadata-bin"

// NewGRPC builds a gRPC server with every service of s registered.
func NewGRPC(s *Server, o GRPCOptions) *grpc.Server {
	maxMsg := o.MaxMessageBytes
	if maxMsg <= 0 {
		maxMsg = DefaultMaxMessageBytes
	}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxMsg),
		grpc.MaxSendMsgSize(maxMsg),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Observation comes first, so that refused calls are heard of too.
		grpc.ChainUnaryInterceptor(unaryObserve(o.OnCall), unaryAuth(o.Token)),
		grpc.ChainStreamInterceptor(streamObserve(o.OnCall), streamAuth(o.Token)),
	}
	if o.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(o.TLS)))
	}
	g := grpc.NewServer(opts...)
	s.Register(g)
	if o.Health != nil {
		o.Health.register(g)
	}
	return g
}

// recheck is how soon a token that does not match makes the token file be
// looked at again: a client that already has the rotated token is let in
// within this, not the file's whole interval.
const recheck = 100 * time.Millisecond

// checkToken compares the bearer token with the file's current one in
// constant time. The token itself never appears in an error.
func checkToken(ctx context.Context, f *tokenfile.File) error {
	if f == nil {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	sent := md.Get("authorization")
	if len(sent) == 0 {
		return status.Error(codes.Unauthenticated, "this server requires an access token (authorization: Bearer)")
	}
	token := f.Token()
	if bearerMatches(sent, token) {
		return nil
	}
	if fresh := f.Fresh(recheck); fresh != token && bearerMatches(sent, fresh) {
		return nil
	}
	return status.Error(codes.Unauthenticated, "invalid access token")
}

func bearerMatches(sent []string, token string) bool {
	for _, v := range sent {
		if got, ok := strings.CutPrefix(v, "Bearer "); ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 {
			return true
		}
	}
	return false
}

// healthMethods, gRPC's health service, need no token: a load balancer's
// probe carries none, and they tell only whether the server serves.
var healthMethods = "/" + healthpb.Health_ServiceDesc.ServiceName + "/"

func unaryAuth(f *tokenfile.File) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if strings.HasPrefix(info.FullMethod, healthMethods) {
			return h(ctx, req)
		}
		if err := checkToken(ctx, f); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

func streamAuth(f *tokenfile.File) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if strings.HasPrefix(info.FullMethod, healthMethods) {
			return h(srv, ss)
		}
		if err := checkToken(ss.Context(), f); err != nil {
			return err
		}
		return h(srv, ss)
	}
}

// newCall starts the record of a call: who, what, and the client's
// RequestMetadata.
func newCall(ctx context.Context, method string) *Call {
	c := &Call{Start: time.Now(), Method: method, Peer: "?"}
	if p, ok := peer.FromContext(ctx); ok {
		c.Peer = p.Addr.String()
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(requestMetadataKey); len(v) > 0 {
		var rm repb.RequestMetadata
		if proto.Unmarshal([]byte(v[0]), &rm) == nil {
			c.Tool = bounded(rm.GetToolDetails().GetToolName())
			c.ToolVersion = bounded(rm.GetToolDetails().GetToolVersion())
			c.Invocation = bounded(rm.GetToolInvocationId())
		}
	}
	return c
}

// bounded cuts a client-chosen string to a length a log line can carry.
func bounded(s string) string {
	const max = 200
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

// request notes what a request message says: its instance name and, for
// index calls, its keys or URIs.
func (c *Call) request(m any) {
	if p, ok := m.(proto.Message); ok {
		c.BytesIn += int64(proto.Size(p))
	}
	if r, ok := m.(interface{ GetInstanceName() string }); ok {
		c.Instance = r.GetInstanceName()
	}
	switch r := m.(type) {
	case *bspb.GetReferenceRequest:
		c.refs([]string{r.GetKey()})
	case *bspb.UpdateReferenceRequest:
		c.refs(r.GetKeys())
	case *assetpb.FetchBlobRequest:
		c.refs(r.GetUris())
	case *assetpb.FetchDirectoryRequest:
		c.refs(r.GetUris())
	case *assetpb.PushBlobRequest:
		c.refs(r.GetUris())
	case *assetpb.PushDirectoryRequest:
		c.refs(r.GetUris())
	case *repb.FindMissingBlobsRequest:
		c.Asked = len(r.GetBlobDigests())
	case *bsgrpc.ReadRequest:
		c.resource(r.GetResourceName(), false)
	case *bsgrpc.WriteRequest:
		c.resource(r.GetResourceName(), true)
	}
}

// resource notes the instance a ByteStream resource name names (only the
// first message of a write names it).
func (c *Call) resource(name string, write bool) {
	if name == "" || c.Instance != "" {
		return
	}
	if res, err := parseResource(name, write); err == nil {
		c.Instance = res.instance
	}
}

func (c *Call) refs(keys []string) {
	c.RefCount += len(keys)
	for _, k := range keys {
		if len(c.Refs) == MaxCallRefs {
			break
		}
		c.Refs = append(c.Refs, bounded(k))
	}
}

// response notes what an answer says.
func (c *Call) response(m any) {
	if p, ok := m.(proto.Message); ok {
		c.BytesOut += int64(proto.Size(p))
	}
	if r, ok := m.(*repb.FindMissingBlobsResponse); ok {
		c.Missing = len(r.GetMissingBlobDigests())
	}
}

// end records how the call ended and hands it to every observer.
func (c *Call) end(err error, observers []func(*Call)) {
	c.Duration = time.Since(c.Start)
	st := status.Convert(err)
	c.Code = st.Code()
	if err != nil {
		c.Message = st.Message()
	}
	for _, o := range observers {
		o(c)
	}
}

func unaryObserve(observers []func(*Call)) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if len(observers) == 0 {
			return h(ctx, req)
		}
		c := newCall(ctx, info.FullMethod)
		c.request(req)
		resp, err := h(ctx, req)
		if err == nil {
			c.response(resp)
		}
		c.end(err, observers)
		return resp, err
	}
}

func streamObserve(observers []func(*Call)) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if len(observers) == 0 {
			return h(srv, ss)
		}
		os := &observedStream{ServerStream: ss, call: newCall(ss.Context(), info.FullMethod)}
		err := h(srv, os)
		os.call.end(err, observers)
		return err
	}
}

// observedStream counts a stream's messages into its Call. A stream's
// messages are received on one goroutine and sent on one (gRPC's rule),
// and the Call is read only once the handler returned.
type observedStream struct {
	grpc.ServerStream
	call *Call
}

func (s *observedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.call.request(m)
	}
	return err
}

func (s *observedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if err == nil {
		s.call.response(m)
	}
	return err
}

// CallLine formats a call as serve -v prints it: peer, method, code,
// duration, message.
func CallLine(c *Call) string {
	line := c.Peer + " " + c.Method + " " + c.Code.String() + " " + c.Duration.Round(time.Microsecond).String()
	if c.Code != codes.OK {
		line += ": " + Printable(c.Message)
	}
	return line
}

// Printable escapes control characters (a newline, an escape sequence) in
// a string a client sent, so a log line stays one line and cannot drive a
// terminal.
func Printable(s string) string {
	if strings.IndexFunc(s, isControl) < 0 {
		return s
	}
	q := strconv.QuoteToGraphic(s)
	return q[1 : len(q)-1]
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 }
