// Package remotes connects to remote caches and speaks their protocols:
// REAPI v2 CAS and ByteStream (through remote-apis-sdks), the Remote Asset
// API, and BuildStream 1's buildstream.v2.ReferenceStorage.
//
// A Remote is one cache from the configuration: one gRPC connection with its
// TLS, client certificate, bearer token and instance name, a concurrency
// limit, and a retry policy that retries only retryable codes. Every error a
// Remote returns is an *Error naming the cache, its URL and the operation;
// a miss is ErrNotFound, whether the RPC said NOT_FOUND or a Remote Asset
// response carried it in its status. Nothing here prints: a caller hears
// of its own calls' retries and size refusals through the Hooks its
// context carries (WithHooks), whoever dialled the Remote.
//
// Credentials: an access-token file is read again when it changes (at
// most once a second); a credential-helper (Bazel's protocol: "PATH get",
// {"uri"} in, {"headers", "expires"} out) is run when the headers it gave
// are about to expire. A call the cache refuses with UNAUTHENTICATED gets
// the credentials again (unless a call refused at the same time just did)
// and is tried once more. Every call carries REAPI's RequestMetadata
// naming the tool, its version and the run (WithTool).
//
// Streams: a ByteStream read or write is bounded by its progress, not by
// the request timeout: it fails when no byte moves for the cache's
// stall-timeout, and as a whole past twice that plus its size at 100 KiB/s.
// A read resumes at read_offset; a write resumes under the same upload
// name from the size QueryWriteStatus says the server committed (from
// zero where it cannot say). With WithUploadKey, upload names are derived
// from the key and the digest, so the next run resumes an upload cut
// short by Ctrl-C or a kill.
//
// Compression: after Probe, a cache that advertises ZSTD (and whose
// compression setting is not "off") gets reads through compressed-blobs
// resources and compressed batch answers, and uploads of content that
// compresses; what comes in is inflated no further than its digest's size
// and checked like any other blob.
package remotes
