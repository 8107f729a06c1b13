package server

import (
	"context"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
)

// Upstream fills the store on a local miss: `serve --upstream`, a
// read-through mirror (transfer.Mirror). Each method stores only what
// matched its digest, and only whole closures for refs; an upstream that
// cannot be asked holds nothing, for these answers.
type Upstream interface {
	// FillRef makes a BuildStream ref of kind local with its closure;
	// found is false, with the reason, when no upstream holds it whole.
	FillRef(ctx context.Context, kind cache.Kind, ref string) (found bool, reason string, err error)
	// FillBlobs makes blobs local and returns those no upstream has.
	FillBlobs(ctx context.Context, ds []digest.Digest) (missing []digest.Digest, err error)
	// FillTrees makes the Directories under roots local (not their
	// files) and returns those no upstream has.
	FillTrees(ctx context.Context, roots []digest.Digest) (lost []digest.Digest, err error)
	// Missing returns those of ds no upstream holds.
	Missing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error)
	// StreamBlob writes a blob to w as it arrives from an upstream and
	// stores it when it matched its digest (and is not larger than the
	// upstream keeps: a mirror's quota). found is false when no upstream
	// has it and nothing was written.
	StreamBlob(ctx context.Context, d digest.Digest, w io.Writer) (found bool, err error)
}

// Replicator forwards the BuildStream index entries clients write to
// replicas: `serve --replicate-to` (transfer.Replicator).
type Replicator interface {
	// Replicate is told the refs of kind just written, all naming one
	// closure. It returns once the work is durable (journaled); an error
	// fails the client's write, which the store holds nonetheless.
	Replicate(ctx context.Context, kind cache.Kind, refs []string) error
}

// viaKey is the gRPC metadata of a mirror's requests to its upstreams:
// the IDs of the mirrors the request came through, so that mirrors
// configured in a loop answer from what they hold instead of asking each
// other for ever. maxVia bounds a chain of mirrors.
const (
	viaKey = "bst-cache-mirror-via"
	maxVia = 16
)

// upstreamFor is the upstream to fill this request's misses from and the
// context to ask it with (naming this server in viaKey): nil when there
// is none, or when the request came through this server already, or
// through maxVia mirrors.
func (s *Server) upstreamFor(ctx context.Context) (Upstream, context.Context) {
	if s.upstream == nil {
		return nil, ctx
	}
	var via []string
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get(viaKey) {
		via = append(via, strings.Split(v, ",")...)
	}
	if len(via) >= maxVia || slices.Contains(via, s.id) {
		return nil, ctx
	}
	via = append(via, s.id)
	return s.upstream, metadata.AppendToOutgoingContext(ctx, viaKey, strings.Join(via, ","))
}

// fillable says whether a local miss of this entry can be filled from
// upstream: BuildStream refs can; the server's own asset records cannot.
func (s *Server) fillable(e entry) bool {
	return s.upstream != nil && e.kind != cache.KindAsset
}

// adopt accounts for what a fill stored: the ref and its closure, each
// object leased from now as if just uploaded.
func (s *Server) adopt(e entry, closure []digest.Digest) {
	if s.quota == nil {
		return
	}
	now := time.Now()
	for _, d := range closure {
		s.quota.stored(d, "", now)
	}
	s.quota.setRef(e.kind, e.ref, closure, now)
}

// filled accounts for those of ds a fill stored.
func (s *Server) filled(ds []digest.Digest) {
	if s.quota == nil {
		return
	}
	for _, d := range ds {
		if ok, _ := s.store.Has(d); ok {
			s.stored(d, "")
		}
	}
}

// fillClosure brings from the upstreams what the store lacks of roots'
// closure, a level at a time (a Directory filled shows the next level),
// until a round fills nothing: a client that FindMissingBlobs told an
// upstream holds a blob may name it without uploading it. Without an
// upstream it does nothing.
func (s *Server) fillClosure(ctx context.Context, roots cache.Roots) error {
	up, uctx := s.upstreamFor(ctx)
	if up == nil {
		return nil
	}
	for {
		_, missing, err := s.store.ClosureOf(roots)
		if err != nil || len(missing) == 0 {
			return err
		}
		still, err := up.FillBlobs(uctx, missing)
		if err != nil {
			return err
		}
		if len(still) == len(missing) {
			return nil
		}
		s.filled(without(missing, still))
	}
}

// without is ds less those in drop.
func without(ds, drop []digest.Digest) []digest.Digest {
	gone := make(map[digest.Digest]bool, len(drop))
	for _, d := range drop {
		gone[d] = true
	}
	var out []digest.Digest
	for _, d := range ds {
		if !gone[d] {
			out = append(out, d)
		}
	}
	return out
}

// fillBatch fills from the upstreams the blobs of a batch read the store
// lacks; those no upstream has stay NOT_FOUND in the answer.
func (s *Server) fillBatch(ctx context.Context, ds []*repb.Digest) error {
	up, uctx := s.upstreamFor(ctx)
	if up == nil {
		return nil
	}
	var need []digest.Digest
	for _, d := range ds {
		dg, err := parseDigest(d)
		if err != nil {
			continue // the answer says so for this entry
		}
		if ok, err := s.store.Has(dg); err == nil && !ok {
			need = append(need, dg)
		}
	}
	if len(need) == 0 {
		return nil
	}
	still, err := up.FillBlobs(uctx, need)
	if err != nil {
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		// The entries the upstreams did not fill answer NOT_FOUND.
		s.logf("upstream: batch read: %v", err)
	}
	s.filled(without(need, still))
	return nil
}

// fillTree fills the tree under a Directory the store lacks (GetTree)
// and reads the Directory.
func (s *Server) fillTree(ctx context.Context, d digest.Digest) ([]byte, error) {
	up, uctx := s.upstreamFor(ctx)
	if up == nil {
		return nil, cache.ErrNotFound
	}
	if _, err := up.FillTrees(uctx, []digest.Digest{d}); err != nil {
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		s.logf("upstream: tree %s: %v", d, err)
	}
	return s.store.ReadBlob(d)
}
