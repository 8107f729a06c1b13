package remotes

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/tokenfile"
)

// creds are a cache's per-RPC credentials.
type creds interface {
	credentials.PerRPCCredentials
	// refresh gets the credentials again after the cache refused those of
	// a call started at since (UNAUTHENTICATED), unless they were got
	// again after it started, and says whether one more attempt may pass.
	refresh(ctx context.Context, since time.Time) bool
}

// newCreds builds the credentials a cache's auth settings name: nil for
// none.
func newCreds(c config.Cache) (creds, error) {
	switch a := c.Auth; {
	case a.AccessTokenFile != "":
		f, err := tokenfile.Open(a.AccessTokenFile)
		if err != nil {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return tokenCreds{f}, nil
	case a.CredentialHelper != "":
		return &helperCreds{cache: c.Name, path: a.CredentialHelper, uri: helperURI(c)}, nil
	}
	return nil, nil
}

// tokenCreds send "authorization: Bearer <token>" with every call, the
// token read again when its file changes (at most once a second), so a
// long run goes on with a rotated token.
type tokenCreds struct{ f *tokenfile.File }

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + t.f.Token()}, nil
}

// RequireTransportSecurity is false so tokens also work with plaintext
// caches on trusted networks; with TLS they are encrypted as usual.
func (tokenCreds) RequireTransportSecurity() bool { return false }

// refresh looks at the file now: the token may have been rotated within
// the last second. A retry with an unchanged token costs one call.
func (t tokenCreds) refresh(context.Context, time.Time) bool {
	t.f.Fresh(0)
	return true
}

// String keeps the token out of anything that formats the credentials.
func (tokenCreds) String() string { return config.Redacted }

// Bounds on a credential helper run, as Bazel's
// --credential_helper_timeout (10 s) has; and how long headers without
// an "expires" are kept, as Bazel's --credential_helper_cache_duration
// (30 min) does.
const (
	helperTimeout   = 10 * time.Second
	helperMaxOutput = 64 << 10
	helperNoExpiry  = 30 * time.Minute
	// helperFailedFor: after a failed run, calls fail with its error for
	// this long before the helper is run again.
	helperFailedFor = 5 * time.Second
)

// helperCreds are headers from a credential helper speaking Bazel's
// credential helper protocol (github.com/EngFlow/credential-helper-spec):
// "PATH get" reads {"uri": ...} and writes {"headers": {name: [values]},
// "expires": RFC 3339}. Headers are kept until shortly before they
// expire and fetched again at once when the cache refuses them. The
// helper's output is never printed: it holds secrets.
type helperCreds struct {
	cache, path, uri string

	mu      sync.Mutex
	headers map[string]string
	until   time.Time // use headers until then
	ran     time.Time // when the last run ended
	err     error     // the last run's failure, kept until ran+helperFailedFor
}

// helperURI is what the helper is asked about: the cache as an https://
// (plaintext: http://) URL, the instance name as its path.
func helperURI(c config.Cache) string {
	scheme := "http"
	if c.Endpoint.TLS {
		scheme = "https"
	}
	return scheme + "://" + c.Endpoint.Target + "/" + c.InstanceName
}

func (h *helperCreds) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	switch {
	case h.headers != nil && now.Before(h.until):
		return h.headers, nil
	case h.err != nil && now.Sub(h.ran) < helperFailedFor:
		return nil, h.err
	}
	if err := h.run(ctx); err != nil {
		return nil, err
	}
	return h.headers, nil
}

func (*helperCreds) RequireTransportSecurity() bool { return false }

func (h *helperCreds) refresh(ctx context.Context, since time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ran.After(since) {
		// Another call refused at the same time ran the helper already.
		return h.err == nil
	}
	return h.run(ctx) == nil
}

func (h *helperCreds) String() string { return "credential helper " + h.path }

// run runs the helper and keeps its headers, or its failure. Called with
// h.mu held.
func (h *helperCreds) run(ctx context.Context) error {
	headers, until, err := h.get(ctx)
	h.ran = time.Now()
	if err != nil {
		h.headers, h.err = nil, status.Error(codes.Unauthenticated, err.Error())
		return h.err
	}
	h.headers, h.until, h.err = headers, until, nil
	return nil
}

// get runs "PATH get" once, bounded in time and output.
func (h *helperCreds) get(ctx context.Context) (map[string]string, time.Time, error) {
	fail := func(format string, args ...any) (map[string]string, time.Time, error) {
		return nil, time.Time{}, fmt.Errorf("credential helper %s for cache %q: %s", h.path, h.cache, fmt.Sprintf(format, args...))
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), helperTimeout)
	defer cancel()
	req, _ := json.Marshal(map[string]string{"uri": h.uri})
	cmd := exec.CommandContext(ctx, h.path, "get")
	cmd.Stdin = bytes.NewReader(req)
	stdout, stderr := &capped{max: helperMaxOutput}, &capped{max: 4 << 10}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = time.Second // a child holding the pipes open does not hang us
	start := time.Now()
	err := cmd.Run()
	said := ""
	if s := strings.TrimSpace(stderr.buf.String()); s != "" {
		said = fmt.Sprintf("; it said %q", truncate(s, 500))
	}
	switch {
	case ctx.Err() != nil:
		return fail("no answer within %s%s", helperTimeout, said)
	case err != nil:
		return fail("%v%s", err, said)
	case stdout.over:
		return fail("it wrote more than %d bytes", helperMaxOutput)
	}
	var resp struct {
		Headers map[string][]string `json:"headers"`
		Expires string              `json:"expires"`
	}
	// The output is never quoted in an error: it holds secrets.
	if err := json.Unmarshal(stdout.buf.Bytes(), &resp); err != nil {
		return fail("its output is not the JSON object the credential helper protocol asks for (%d bytes)", stdout.buf.Len())
	}
	headers := map[string]string{}
	for k, vs := range resp.Headers {
		k = strings.ToLower(k)
		if !validHeader(k, vs) {
			return fail("it named a header gRPC cannot carry (%q)", truncate(k, 60))
		}
		headers[k] = strings.Join(vs, ", ")
	}
	until := start.Add(helperNoExpiry)
	if resp.Expires != "" {
		exp, err := time.Parse(time.RFC3339, resp.Expires)
		if err != nil {
			return fail("its \"expires\" is not an RFC 3339 time (%q)", truncate(resp.Expires, 40))
		}
		// Fetch again a tenth of the lifetime (at most 30 s) before the
		// end, so no call leaves with headers about to expire.
		until = exp.Add(-min((exp.Sub(start))/10, 30*time.Second))
	}
	return headers, until, nil
}

// validHeader says whether gRPC can send a header: a lower-case name of
// letters, digits, '-', '_' and '.', not a reserved one, and printable
// ASCII values.
func validHeader(name string, values []string) bool {
	if name == "" || strings.HasPrefix(name, "grpc-") || strings.HasSuffix(name, "-bin") || strings.HasPrefix(name, ":") {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	for _, v := range values {
		for i := 0; i < len(v); i++ {
			if v[i] < 0x20 || v[i] > 0x7e {
				return false
			}
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// capped is a buffer that keeps at most max bytes and says whether more
// came. (It has no ReadFrom, which would read past the cap.)
type capped struct {
	buf  bytes.Buffer
	max  int
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); len(p) > room {
		c.over = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil // keep reading, so the helper is not blocked on a full pipe
	}
	return c.buf.Write(p)
}

// Tool identifies the program behind the calls, sent with each one as
// REAPI's RequestMetadata so that a server's logs can tell runs apart.
type Tool struct {
	Name, Version string
	// Invocation is the run's id; a fresh one per process when empty.
	Invocation string
}

type toolKey struct{}

// WithTool returns ctx naming the tool for every Remote dialled with it.
// Without it, calls name "bst-cache" with no version.
func WithTool(ctx context.Context, t Tool) context.Context {
	return context.WithValue(ctx, toolKey{}, t)
}

// processInvocation is the invocation id of calls whose dial named none.
var processInvocation = uuid.NewString()

// requestMetadata is the RequestMetadata header for the tool ctx names.
func requestMetadata(ctx context.Context) string {
	t, _ := ctx.Value(toolKey{}).(Tool)
	if t.Name == "" {
		t.Name = "bst-cache"
	}
	if t.Invocation == "" {
		t.Invocation = processInvocation
	}
	b, _ := proto.Marshal(&repb.RequestMetadata{
		ToolDetails:      &repb.ToolDetails{ToolName: t.Name, ToolVersion: t.Version},
		ToolInvocationId: t.Invocation,
	})
	return string(b)
}

// requestMetadataKey is REAPI's header for RequestMetadata.
const requestMetadataKey = "build.bazel.remote.execution.v2.requestmetadata-bin"

// withRequestMetadata sends md with every call of a connection.
func withRequestMetadata(md string) []grpc.DialOption {
	add := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, requestMetadataKey, md)
	}
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(add(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(add(ctx), desc, cc, method, opts...)
		}),
	}
}

// authRefused says whether err is the cache refusing the credentials.
func authRefused(err error) bool {
	var re *Error
	if errors.As(err, &re) {
		return re.Code == codes.Unauthenticated
	}
	return status.Code(err) == codes.Unauthenticated
}
