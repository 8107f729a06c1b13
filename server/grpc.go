package server

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// GRPCOptions configure the gRPC server around a Server.
type GRPCOptions struct {
	// TLS, when set, serves TLS (with client certificate checks if it
	// says so).
	TLS *tls.Config
	// Token, when set, is required as "authorization: Bearer TOKEN" on
	// every call.
	Token string
	// MaxMessageBytes bounds received and sent messages
	// (DefaultMaxMessageBytes when zero).
	MaxMessageBytes int
	// LogCall, when set, receives one line per call.
	LogCall func(line string)
}

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
		grpc.ChainUnaryInterceptor(unaryLog(o.LogCall), unaryAuth(o.Token)),
		grpc.ChainStreamInterceptor(streamLog(o.LogCall), streamAuth(o.Token)),
	}
	if o.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(o.TLS)))
	}
	g := grpc.NewServer(opts...)
	s.Register(g)
	return g
}

// checkToken compares the bearer token in constant time. The token itself
// never appears in an error.
func checkToken(ctx context.Context, token string) error {
	if token == "" {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if got, ok := strings.CutPrefix(v, "Bearer "); ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 {
			return nil
		}
	}
	if len(md.Get("authorization")) == 0 {
		return status.Error(codes.Unauthenticated, "this server requires an access token (authorization: Bearer)")
	}
	return status.Error(codes.Unauthenticated, "invalid access token")
}

func unaryAuth(token string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := checkToken(ctx, token); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

func streamAuth(token string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := checkToken(ss.Context(), token); err != nil {
			return err
		}
		return h(srv, ss)
	}
}

// callLine formats one log line: peer, method, code, duration, message.
func callLine(ctx context.Context, method string, start time.Time, err error) string {
	from := "?"
	if p, ok := peer.FromContext(ctx); ok {
		from = p.Addr.String()
	}
	st := status.Convert(err)
	line := from + " " + method + " " + st.Code().String() + " " + time.Since(start).Round(time.Microsecond).String()
	if err != nil {
		line += ": " + Printable(st.Message())
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

func unaryLog(logCall func(string)) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := h(ctx, req)
		if logCall != nil {
			logCall(callLine(ctx, info.FullMethod, start, err))
		}
		return resp, err
	}
}

func streamLog(logCall func(string)) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		start := time.Now()
		err := h(srv, ss)
		if logCall != nil {
			logCall(callLine(ss.Context(), info.FullMethod, start, err))
		}
		return err
	}
}
