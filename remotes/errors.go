package remotes

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrNotFound is what a miss wraps: the ref or blob is not on the cache.
// It is the only error that moves a priority walk on quietly.
var ErrNotFound = errors.New("not found")

// ErrBlobsMissing is wrapped when the cache refused an index write because
// it lacks blobs the entry names: FAILED_PRECONDITION with a REAPI
// PreconditionFailure of type MISSING. A cache under a quota may have
// evicted blobs a push sent before the push named them; sending them
// again and writing the entry again can succeed.
var ErrBlobsMissing = errors.New("the cache lacks blobs the entry names")

// blobsMissing tells a refusal for missing blobs from other failed
// preconditions.
func blobsMissing(err error) bool {
	if status.Code(err) != codes.FailedPrecondition {
		return false
	}
	for _, d := range status.Convert(err).Details() {
		if pf, ok := d.(*errdetails.PreconditionFailure); ok {
			for _, v := range pf.GetViolations() {
				if v.GetType() == "MISSING" {
					return true
				}
			}
		}
	}
	return false
}

// ErrTooLarge is wrapped when the peer refused a message as larger than its
// receive limit (RESOURCE_EXHAUSTED "larger than max"). It is not
// transient: retrying the same message fails the same way, so callers send
// smaller ones instead.
var ErrTooLarge = errors.New("message over the peer's size limit")

// tooLarge tells a message-size refusal from other RESOURCE_EXHAUSTED
// answers (a full quota, rate limits), which may pass with time.
func tooLarge(err error) bool {
	if status.Code(err) != codes.ResourceExhausted {
		return false
	}
	return strings.Contains(strings.ToLower(status.Convert(err).Message()), "larger than max")
}

// Error is a failed call to a cache.
type Error struct {
	Cache string // the cache's configured name
	URL   string
	Op    string // the RPC or operation, e.g. "GetReference demo/hello/1d89…"
	Code  codes.Code
	Err   error
	// Hint, when set, says what to do about it.
	Hint string
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("cache %s (%s): %s: %s", e.Cache, e.URL, e.Op, describe(e.Code, e.Err))
	if e.Hint != "" {
		msg += " (" + e.Hint + ")"
	}
	return msg
}

// Unwrap returns the underlying error; a NOT_FOUND code also matches
// ErrNotFound, a refusal for missing blobs ErrBlobsMissing.
func (e *Error) Unwrap() []error {
	switch {
	case e.Code == codes.NotFound:
		return []error{e.Err, ErrNotFound}
	case tooLarge(e.Err):
		return []error{e.Err, ErrTooLarge}
	case blobsMissing(e.Err):
		return []error{e.Err, ErrBlobsMissing}
	}
	return []error{e.Err}
}

// Temporary reports whether trying again later may succeed.
func (e *Error) Temporary() bool { return retryable(e.Code, true) }

// Unreachable reports whether the cache could not be reached at all.
func (e *Error) Unreachable() bool {
	return e.Code == codes.Unavailable || e.Code == codes.DeadlineExceeded
}

func describe(c codes.Code, err error) string {
	msg := err.Error()
	if s, ok := status.FromError(err); ok {
		msg = s.Message()
	}
	switch c {
	case codes.OK, codes.Unknown:
		return msg
	case codes.NotFound:
		if msg == "" {
			return "not found"
		}
	case codes.Unavailable:
		// grpc wraps dial errors twice; the innermost text is what helps.
		if i := strings.Index(msg, "Error while dialing: "); i >= 0 {
			msg = strings.TrimSuffix(msg[i+len("Error while dialing: "):], `"`)
		}
		return "unreachable: " + msg
	case codes.DeadlineExceeded:
		return "timed out: " + msg
	case codes.Unauthenticated:
		return "not authenticated (check the cache's access-token or credential-helper): " + msg
	case codes.PermissionDenied:
		return "permission denied: " + msg
	case codes.Unimplemented:
		return "not supported by the server: " + msg
	}
	return fmt.Sprintf("%s: %s", codeName(c), msg)
}

func codeName(c codes.Code) string {
	switch c {
	case codes.InvalidArgument:
		return "invalid argument"
	case codes.FailedPrecondition:
		return "failed precondition"
	case codes.ResourceExhausted:
		return "resource exhausted"
	}
	return c.String()
}

// wrap turns an RPC error into an *Error for this remote. nil stays nil.
func (r *Remote) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var re *Error
	if errors.As(err, &re) {
		return err
	}
	code := status.Code(err)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return &Error{Cache: r.name, URL: r.url, Op: op, Code: code, Err: err}
}

// notFound builds the error for a miss reported inside a response.
func (r *Remote) notFound(op, msg string) error {
	return &Error{Cache: r.name, URL: r.url, Op: op, Code: codes.NotFound, Err: status.Error(codes.NotFound, msg)}
}

// shouldRetry says whether err is worth another attempt: a retryable code
// that is not a message-size refusal, or a batch answer that did not
// account for a blob.
func shouldRetry(err error, idempotent bool) bool {
	return errors.Is(err, errUnanswered) || retryable(status.Code(err), idempotent) && !tooLarge(err)
}

// retryable says which codes are worth another attempt. DEADLINE_EXCEEDED is
// retried only for idempotent calls.
func retryable(c codes.Code, idempotent bool) bool {
	switch c {
	case codes.Unavailable, codes.ResourceExhausted:
		return true
	case codes.DeadlineExceeded:
		return idempotent
	}
	return false
}
