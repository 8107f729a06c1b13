package remotes

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/client"
	"github.com/bazelbuild/remote-apis-sdks/go/pkg/retry"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"

	"github.com/bst-cache/bst-cache/config"
)

// MaxMessageBytes is the largest gRPC message sent or received. Batches are
// sized to stay below it.
const MaxMessageBytes = 64 << 20

// RetryEvent describes a call that failed and will be tried again.
type RetryEvent struct {
	Cache   string
	Op      string
	Attempt int // 1 for the first retry
	Delay   time.Duration
	Err     error
}

// Option configures Dial.
type Option func(*options)

type options struct {
	concurrency int
	limiters    []*rate.Limiter
	uploadKey   string
}

// ShrinkEvent says that a cache refused a message as too large and that
// the batch or chunk size was halved for the rest of the run.
type ShrinkEvent struct {
	Cache, URL string
	What       string // "batch" or "chunk"
	Size       int64  // the new size in bytes
}

// Hooks observe what a Remote does for one caller: each retry, and each
// halving of the batch or ByteStream chunk size after a message-size
// refusal. They travel with the call's context (WithHooks), as
// net/http/httptrace's do, so callers sharing a Remote each hear about
// their own calls and no caller's hooks outlive its calls. Either may be
// nil; without hooks a Remote retries and shrinks silently.
type Hooks struct {
	OnRetry  func(RetryEvent)
	OnShrink func(ShrinkEvent)
}

type hooksKey struct{}

// WithHooks returns ctx carrying h for every call made with it.
func WithHooks(ctx context.Context, h Hooks) context.Context {
	return context.WithValue(ctx, hooksKey{}, h)
}

// hooksOf is what WithHooks put in ctx.
func hooksOf(ctx context.Context) Hooks {
	h, _ := ctx.Value(hooksKey{}).(Hooks)
	return h
}

// WithUploadKey names ByteStream uploads after key and the blob's digest
// instead of a random UUID, so that an upload cut short (Ctrl-C, a kill)
// is found again by the next run with the same key and resumed from what
// the server holds. The key must differ between clients that may upload
// the same blob at once (a random id kept with the local store does). The
// default is a random name per upload, resumed only within the run.
func WithUploadKey(key string) Option { return func(o *options) { o.uploadKey = key } }

// Dial prepares a connection to a cache. Connecting is lazy: an unreachable
// cache shows on the first call, which fails fast.
func Dial(ctx context.Context, c config.Cache, opts ...Option) (*Remote, error) {
	o := options{concurrency: c.MaxConcurrency}
	for _, opt := range opts {
		opt(&o)
	}
	if o.concurrency < 1 {
		o.concurrency = 1
	}
	r := &Remote{
		name:      c.Name,
		url:       c.URL,
		target:    c.Endpoint.Target,
		tls:       c.Endpoint.TLS,
		instance:  c.InstanceName,
		conn:      c.Connection,
		compress:  c.Compression,
		sem:       make(chan struct{}, o.concurrency),
		uploadKey: o.uploadKey,
	}
	r.chunk.Store(writeChunk)
	creds, err := newCreds(c)
	if err != nil {
		return nil, r.wrap("reading access token", err)
	}
	r.creds = creds

	params := client.DialParams{
		Service:           c.Endpoint.Target,
		NoSecurity:        !c.Endpoint.TLS,
		NoAuth:            true,
		TLSServerName:     c.Endpoint.ServerName,
		TLSCACertFile:     c.Auth.ServerCert,
		TLSClientAuthCert: c.Auth.ClientCert,
		TLSClientAuthKey:  c.Auth.ClientKey,
		DialOpts: []grpc.DialOption{
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: time.Minute, Timeout: 20 * time.Second}),
			grpc.WithConnectParams(grpc.ConnectParams{
				MinConnectTimeout: c.Connection.ConnectTimeout,
				Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			}),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
			withDownloadCodec(),
		},
	}
	if c.Bandwidth > 0 {
		o.limiters = append(o.limiters, NewLimiter(c.Bandwidth))
	}
	if len(o.limiters) > 0 {
		params.DialOpts = append(params.DialOpts, limitedDialer(c.Endpoint.Target, o.limiters))
	}
	if creds != nil {
		params.DialOpts = append(params.DialOpts, grpc.WithPerRPCCredentials(r.creds))
	}
	params.DialOpts = append(params.DialOpts, withRequestMetadata(requestMetadata(ctx))...)
	dialOpts, _, err := client.OptsFromParams(ctx, params)
	if err != nil {
		return nil, r.wrap("preparing connection", err)
	}
	cc, err := grpc.NewClient(c.Endpoint.Target, dialOpts...)
	if err != nil {
		return nil, r.wrap("connecting", err)
	}
	r.cc = cc
	r.sdk, err = client.NewClientFromConnection(ctx, c.InstanceName, cc, cc,
		client.StartupCapabilities(false),
		client.CASConcurrency(o.concurrency),
		client.RPCTimeouts{"default": c.Connection.RequestTimeout},
		&client.Retrier{
			Backoff: retry.ExponentialBackoff(c.Connection.RetryDelay, 30*c.Connection.RetryDelay, retry.Attempts(c.Connection.RetryLimit+1)),
			// The sdk does not say when the refused attempt began: a
			// second is as far back as calls refused together reach.
			ShouldRetry: func(err error) bool {
				return shouldRetry(err, true) || r.reauth(ctx, err, time.Now().Add(-time.Second))
			},
		},
	)
	if err != nil {
		cc.Close()
		return nil, r.wrap("connecting", err)
	}
	r.bindStubs()
	return r, nil
}

// reauth says, after a call failed, whether the cache refused the
// credentials of an attempt started at since and they were got again
// (the token file read, the helper run), so that one more attempt may
// pass.
func (r *Remote) reauth(ctx context.Context, err error, since time.Time) bool {
	return r.creds != nil && authRefused(err) && r.creds.refresh(ctx, since)
}

// call runs one RPC under the concurrency limit and the request timeout,
// retrying retryable codes with exponential backoff and jitter.
func (r *Remote) call(ctx context.Context, op string, idempotent bool, f func(ctx context.Context) error) error {
	return r.retry(ctx, op, idempotent, r.conn.RequestTimeout, f)
}

// retry runs f under the concurrency limit, again after retryable errors
// with exponential backoff and jitter (DEADLINE_EXCEEDED only when
// idempotent). Each attempt is bounded by perAttempt when it is positive;
// zero leaves the bound to ctx. Errors that are not the cache's
// (localError) end it at once.
func (r *Remote) retry(ctx context.Context, op string, idempotent bool, perAttempt time.Duration, f func(ctx context.Context) error) error {
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return r.wrap(op, ctx.Err())
	}
	defer func() { <-r.sem }()

	delay := r.conn.RetryDelay
	reauthed := false
	for attempt := 0; ; attempt++ {
		cctx, cancel := ctx, context.CancelFunc(func() {})
		if perAttempt > 0 {
			cctx, cancel = context.WithTimeout(ctx, perAttempt)
		}
		began := time.Now()
		err := f(cctx)
		cancel()
		if err == nil {
			return nil
		}
		var le localError
		if errors.As(err, &le) {
			return err
		}
		if ctx.Err() != nil {
			// The caller gave up (Ctrl-C, its deadline): gRPC's
			// CANCELLED status does not say so to errors.Is.
			return r.wrap(op, ctx.Err())
		}
		if !reauthed && r.reauth(ctx, err, began) {
			// The credentials were refused: got again, they are tried
			// once more at once, whatever the retry limit.
			reauthed = true
			attempt--
			continue
		}
		if attempt >= r.conn.RetryLimit || !shouldRetry(err, idempotent) {
			return r.wrap(op, err)
		}
		wait := delay/2 + rand.N(delay)
		if on := hooksOf(ctx).OnRetry; on != nil {
			on(RetryEvent{Cache: r.name, Op: op, Attempt: attempt + 1, Delay: wait, Err: r.wrap(op, err)})
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return r.wrap(op, ctx.Err())
		}
		delay = min(2*delay, 30*r.conn.RetryDelay)
	}
}

// sdkCall runs an operation that remote-apis-sdks carries out: the sdk
// applies the same retry policy and per-RPC timeout itself (set in Dial), so
// only the concurrency limit and error wrapping are added here; retrying
// again would multiply the attempts.
func (r *Remote) sdkCall(ctx context.Context, op string, f func(ctx context.Context) error) error {
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return r.wrap(op, ctx.Err())
	}
	defer func() { <-r.sem }()
	err := f(ctx)
	if err != nil && ctx.Err() != nil {
		err = ctx.Err() // as in retry
	}
	return r.wrap(op, err)
}

func (r *Remote) String() string { return fmt.Sprintf("%s (%s)", r.name, r.url) }
