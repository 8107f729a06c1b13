package server

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
	lspb "github.com/bst-cache/bst-cache/protos/bstcache/v1"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// DefaultMaxBatchBytes is the largest max_batch_total_size_bytes the server
// advertises and enforces on batch calls.
const DefaultMaxBatchBytes = 4<<20 - 64<<10

// DefaultMaxMessageBytes is the default gRPC message size limit.
const DefaultMaxMessageBytes = 16 << 20

// framingMargin is left between the batch limit and the message limit for
// the per-blob digests and statuses around the data.
const framingMargin = 64 << 10

// Options configure a Server.
type Options struct {
	// Store is the local store served.
	Store *cache.Store
	// AllowWrites enables every write call; without it writes answer
	// PERMISSION_DENIED.
	AllowWrites bool
	// InstanceNames are the instance names served, all from the one store.
	// Empty means only the empty instance name.
	InstanceNames []string
	// Quota, when positive, bounds the bytes of objects kept; the least
	// recently used refs are evicted first. It is enforced once the store
	// is measured, in the background: the server serves meanwhile.
	Quota int64
	// MaxMessageBytes is the gRPC message limit (DefaultMaxMessageBytes when
	// zero); batch calls are limited to fit in it.
	MaxMessageBytes int
	// Logf, when set, receives diagnostic lines (evictions, corrupt objects).
	Logf func(format string, args ...any)
	// UploadLimits overrides the bounds on uploads in progress (tests).
	UploadLimits *UploadLimits
	// Upstream, when set, fills the store on a local miss (serve
	// --upstream); writes stay local.
	Upstream Upstream
	// Replicator, when set, forwards the BuildStream index entries
	// clients write (serve --replicate-to).
	Replicator Replicator
	// Lease is how long a blob reported present or uploaded is kept from
	// eviction (DefaultLease when zero).
	Lease time.Duration
	// ReadLease is how long the blobs of a ref a client was given, and a
	// blob it reads, are kept from eviction (DefaultReadLease when zero).
	ReadLease time.Duration
}

// Server serves one store over the REAPI CAS, ByteStream, Capabilities,
// Remote Asset and BuildStream ReferenceStorage services.
type Server struct {
	repb.UnimplementedContentAddressableStorageServer
	repb.UnimplementedCapabilitiesServer
	bspb.UnimplementedReferenceStorageServer

	store       *cache.Store
	allowWrites bool
	instances   map[string]bool
	maxBatch    int64
	logf        func(format string, args ...any)
	upstream    Upstream
	replicator  Replicator
	// id names this server in the requests it makes upstream (viaKey).
	id string

	// uploads holds ByteStream writes in progress or parked for a resume.
	uploads *uploadTable

	// refsMu orders index writes (read lock: check a closure, then write the
	// ref) against eviction (write lock), so eviction never removes what a
	// ref being written was just found to have.
	refsMu sync.RWMutex
	quota  *quota
	// empty stores the empty blob once the store has a layout.
	empty sync.Once
	// stopIndex ends the walk that fills the store's object index.
	stopIndex context.CancelFunc
	// indexed is closed once that walk has ended and said so.
	indexed chan struct{}
	// count holds the counters Stats reads.
	count counters
}

// emptyDigest is the empty blob's: REAPI treats it as always present.
var emptyDigest = digest.NewFromBlob(nil)

// putEmpty stores the empty blob, once.
func (s *Server) putEmpty() (err error) {
	s.empty.Do(func() {
		if err = s.store.PutBytes(emptyDigest, nil); err != nil {
			err = fmt.Errorf("storing the empty blob: %w", err)
		}
	})
	return err
}

// New prepares a server over opts.Store. Clients never upload the empty
// blob (REAPI treats it as always present), so the store is given it here,
// or for a new store once the first artifact settles its layout:
// BuildStream checks empty files out by hard link to it.
func New(opts Options) (*Server, error) {
	if opts.Store == nil {
		return nil, fmt.Errorf("server: no store")
	}
	s := &Server{
		store:       opts.Store,
		allowWrites: opts.AllowWrites,
		instances:   map[string]bool{},
		maxBatch:    DefaultMaxBatchBytes,
		logf:        opts.Logf,
		upstream:    opts.Upstream,
		replicator:  opts.Replicator,
		id:          rand.Text()[:16],
		uploads:     newUploadTable(opts.Store, opts.uploadLimits()),
	}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	if len(opts.InstanceNames) == 0 {
		s.instances[""] = true
	}
	for _, n := range opts.InstanceNames {
		s.instances[n] = true
	}
	if s.store.Layout() != cache.KindArtifact {
		if err := s.putEmpty(); err != nil {
			return nil, err
		}
	}
	if m := int64(opts.MaxMessageBytes); m > 0 && m-framingMargin < s.maxBatch {
		if m <= 2*framingMargin {
			return nil, fmt.Errorf("max message size %d is too small (at least %d)", m, 2*framingMargin+1)
		}
		s.maxBatch = m - framingMargin
	}
	if opts.Quota > 0 {
		lease, readLease := opts.Lease, opts.ReadLease
		if lease <= 0 {
			lease = DefaultLease
		}
		if readLease <= 0 {
			readLease = DefaultReadLease
		}
		s.quota = newQuota(s, opts.Quota, lease, readLease)
	}
	// FindMissingBlobs answers from memory (cache.Store.Present). One
	// walk of the store fills the index and the quota's account.
	var ictx context.Context
	ictx, s.stopIndex = context.WithCancel(context.Background())
	start := time.Now()
	indexed := make(chan struct{})
	s.indexed = indexed
	o := cache.IndexOptions{
		Done: func(err error) {
			defer close(indexed)
			if s.quota != nil {
				qerr := err
				if ictx.Err() != nil {
					qerr = errStopped
				}
				s.quota.walked <- qerr
			}
			switch {
			case err == nil:
				s.logf("object index: built in %s", time.Since(start).Round(time.Millisecond))
			case ictx.Err() == nil:
				s.logf("object index: %v (lookups ask the disk)", err)
			}
		},
		Lost: func(err error) {
			if ictx.Err() == nil {
				s.logf("object index: %v", err)
			}
		},
	}
	if s.quota != nil {
		o.Visit = s.quota.object
	}
	s.store.IndexObjects(ictx, o)
	return s, nil
}

// uploadLimits are the bounds on uploads in progress: the defaults, or
// those a test sets.
func (o Options) uploadLimits() UploadLimits {
	if o.UploadLimits != nil {
		return *o.UploadLimits
	}
	return DefaultUploadLimits(o.Quota)
}

// Register adds every service to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	repb.RegisterContentAddressableStorageServer(g, s)
	repb.RegisterCapabilitiesServer(g, s)
	bsgrpc.RegisterByteStreamServer(g, byteStream{s})
	assetpb.RegisterFetchServer(g, fetch{s})
	assetpb.RegisterPushServer(g, push{s})
	bspb.RegisterReferenceStorageServer(g, s)
	lspb.RegisterRefListingServer(g, &listing{Server: s, cursors: newListCursors()})
}

// Close aborts unfinished uploads and stops background work.
func (s *Server) Close() {
	s.stopIndex()
	<-s.indexed // the walk stops at once; it logs nothing after Close
	s.uploads.closeAll()
	if s.quota != nil {
		s.quota.stop()
	}
}

// checkInstance refuses instance names the server does not serve.
func (s *Server) checkInstance(name string) error {
	if s.instances[name] {
		return nil
	}
	served := make([]string, 0, len(s.instances))
	for n := range s.instances {
		served = append(served, fmt.Sprintf("%q", n))
	}
	return status.Errorf(codes.InvalidArgument, "unknown instance name %q (this server serves %s)", name, strings.Join(served, ", "))
}

// checkWrite refuses writes unless they are enabled.
func (s *Server) checkWrite() error {
	if !s.allowWrites {
		return status.Error(codes.PermissionDenied, "this server does not accept pushes (start it with --enable-push)")
	}
	return nil
}

// parseDigest validates a digest from a request.
func parseDigest(d *repb.Digest) (digest.Digest, error) {
	if d == nil {
		return digest.Digest{}, status.Error(codes.InvalidArgument, "missing digest")
	}
	dg := digest.NewFromProtoUnvalidated(d)
	if cache.CheckDigest(dg) != nil {
		return digest.Digest{}, status.Errorf(codes.InvalidArgument, "invalid digest %s/%d: %v", d.GetHash(), d.GetSizeBytes(), dg.Validate())
	}
	return dg, nil
}

// stored records a blob newly written by client (clientOf; "" for the
// server's own fills), for the quota.
func (s *Server) stored(d digest.Digest, client string) {
	if s.quota != nil {
		s.quota.stored(d, client, time.Now())
	}
}

// lend keeps blobs client (clientOf) is about to read from eviction for a
// while (the quota's read lease).
func (s *Server) lend(client string, ds ...digest.Digest) {
	if s.quota != nil {
		s.quota.lend(ds, client, time.Now())
	}
}

// touch marks blobs as recently used when a quota is in force.
func (s *Server) touch(ds ...digest.Digest) {
	if s.quota == nil {
		return
	}
	for _, d := range s.quota.use(ds, time.Now()) {
		s.store.Touch(d)
	}
}
