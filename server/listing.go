package server

import (
	"context"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	lspb "github.com/bst-cache/bst-cache/protos/bstcache/v1"
)

// maxListPage is the most refs one ListRefs response carries.
const maxListPage = 1000

// Listings in progress keep their walk between pages (listCursors): at
// most maxListCursors of them, each for at most listCursorIdle after its
// last page. A page whose walk was dropped walks again from its token.
const (
	maxListCursors = 8
	listCursorIdle = 2 * time.Minute
)

// listing serves bst-cache's own RefListing service: what a store holds,
// for `bst-cache ls --cache`.
type listing struct {
	*Server
	lspb.UnimplementedRefListingServer
	cursors *listCursors
}

// ListRefs returns refs of one kind in name order, after the page token
// (the last name of the previous page, so a page never repeats or skips a
// ref that stays), under the prefix, but not those an eviction pass is
// deleting. A page costs its own size: the walk
// reads the directories on the way to its refs, and goes on where the
// last page left it when that listing's walk is still kept.
func (l *listing) ListRefs(_ context.Context, req *lspb.ListRefsRequest) (*lspb.ListRefsResponse, error) {
	if err := l.checkInstance(req.GetInstanceName()); err != nil {
		return nil, err
	}
	kind := cache.Kind(req.GetKind())
	switch kind {
	case cache.KindBst1Artifact, cache.KindBst2Artifact, cache.KindSource:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "kind %q: want bst1-artifact, bst2-artifact or source", req.GetKind())
	}
	size := int(req.GetPageSize())
	if size <= 0 || size > maxListPage {
		size = maxListPage
	}
	key := cursorKey{kind: kind, prefix: strings.Trim(req.GetPrefix(), "/"), after: req.GetPageToken()}
	cur := l.cursors.take(key)
	if cur == nil {
		// The walk reads each ref as it lists it, a few directories
		// ahead in the background.
		cur = &listCursor{refs: l.store.Refs(kind, key.prefix, key.after, cache.WithRefData())}
	}
	resp := &lspb.ListRefsResponse{}
	for cur.next() {
		if l.quota != nil && l.quota.refGoing(kind, cur.refs.Name()) {
			continue // an eviction pass is deleting it
		}
		if len(resp.Refs) == size {
			// cur's ref is the next page's first.
			cur.pending = true
			key.after = resp.Refs[size-1].Name
			resp.NextPageToken = key.after
			l.cursors.put(key, cur)
			break
		}
		resp.Refs = append(resp.Refs, listed(kind, cur.refs))
	}
	if err := cur.refs.Err(); err != nil {
		return nil, status.Errorf(codes.Internal, "listing refs: %v", err)
	}
	return resp, nil
}

// listed is the ref a walk is at, for a listing: without a digest when
// it cannot be read.
func listed(kind cache.Kind, refs *cache.RefCursor) *lspb.Ref {
	data, info, err := refs.Data()
	ref := &lspb.Ref{Name: refs.Name(), Modified: info.Modified.Unix()}
	if err == nil {
		if d, err := buildstream.RefDigest(kind == cache.KindBst1Artifact, data); err == nil {
			ref.Digest = d.String()
		}
	}
	return ref
}

// listCursor is a listing's walk; pending when its current ref is not
// yet listed.
type listCursor struct {
	refs    *cache.RefCursor
	pending bool
	used    time.Time
}

func (c *listCursor) next() bool {
	if c.pending {
		c.pending = false
		return true
	}
	return c.refs.Next()
}

// cursorKey is what a listing's next page asks for.
type cursorKey struct {
	kind          cache.Kind
	prefix, after string
}

// listCursors keeps the walks of listings in progress, bounded in number
// and time: a client that never asks for its next page holds nothing for
// long.
type listCursors struct {
	mu sync.Mutex
	m  map[cursorKey]*listCursor
}

func newListCursors() *listCursors { return &listCursors{m: map[cursorKey]*listCursor{}} }

// take hands over the walk kept for key, if any: one page at a time uses it.
func (cs *listCursors) take(key cursorKey) *listCursor {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	c := cs.m[key]
	delete(cs.m, key)
	if c != nil && time.Since(c.used) > listCursorIdle {
		return nil
	}
	return c
}

// put keeps a walk for the page after key, dropping the idle ones and,
// when still full, the one used longest ago.
func (cs *listCursors) put(key cursorKey, c *listCursor) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	now := time.Now()
	c.used = now
	var oldest cursorKey
	for k, o := range cs.m {
		if now.Sub(o.used) > listCursorIdle {
			delete(cs.m, k)
		} else if _, ok := cs.m[oldest]; !ok || o.used.Before(cs.m[oldest].used) {
			oldest = k
		}
	}
	if len(cs.m) >= maxListCursors {
		delete(cs.m, oldest)
	}
	cs.m[key] = c
}
