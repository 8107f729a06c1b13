package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
)

// assetType says whether an index entry names a blob or a Directory.
type assetType string

const (
	assetBlob      assetType = "blob"
	assetDirectory assetType = "directory"
)

// entry is where one (URI, qualifiers) lives in the store: a BuildStream
// URN without qualifiers maps to BuildStream's own layout (a bst1 ref read
// by ReferenceStorage too, an Artifact or Source proto), anything else to
// the server's own index of JSON records.
type entry struct {
	kind cache.Kind
	ref  string
}

// entryFor maps a URI and qualifiers, for a blob or a Directory, to its
// place in the store.
func entryFor(typ assetType, uri string, qualifiers []*assetpb.Qualifier) (entry, error) {
	if uri == "" {
		return entry{}, status.Error(codes.InvalidArgument, "empty URI")
	}
	if len(qualifiers) == 0 {
		for prefix, e := range map[string]struct {
			kind cache.Kind
			typ  assetType
		}{
			buildstream.URNBst1Artifact: {cache.KindBst1Artifact, assetDirectory},
			buildstream.URNBst2Artifact: {cache.KindBst2Artifact, assetBlob},
			buildstream.URNBst2Source:   {cache.KindSource, assetBlob},
		} {
			ref, ok := strings.CutPrefix(uri, prefix)
			if !ok || e.typ != typ {
				continue
			}
			if err := cache.ValidateRef(ref); err != nil {
				return entry{}, status.Errorf(codes.InvalidArgument, "URI %q: %v", uri, err)
			}
			return entry{kind: e.kind, ref: ref}, nil
		}
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s", typ, uri)
	for _, q := range sortedQualifiers(qualifiers) {
		fmt.Fprintf(h, "\x00%s\x00%s", q.GetName(), q.GetValue())
	}
	sum := hex.EncodeToString(h.Sum(nil))
	return entry{kind: cache.KindAsset, ref: sum[:2] + "/" + sum[2:]}, nil
}

func sortedQualifiers(qs []*assetpb.Qualifier) []*assetpb.Qualifier {
	out := append([]*assetpb.Qualifier(nil), qs...)
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetName() != out[j].GetName() {
			return out[i].GetName() < out[j].GetName()
		}
		return out[i].GetValue() < out[j].GetValue()
	})
	return out
}

// record is the JSON kept for a generic Remote Asset entry.
type record struct {
	Type          assetType         `json:"type"`
	URI           string            `json:"uri"`
	Qualifiers    map[string]string `json:"qualifiers,omitempty"`
	Digest        string            `json:"digest"`
	RefBlobs      []string          `json:"references_blobs,omitempty"`
	RefDirs       []string          `json:"references_directories,omitempty"`
	ExpireAtUnixS int64             `json:"expire_at,omitempty"`
}

func digestStrings(ds []digest.Digest) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.String()
	}
	return out
}

func parseDigests(ss []string) ([]digest.Digest, error) {
	out := make([]digest.Digest, len(ss))
	for i, s := range ss {
		d, err := digest.NewFromString(s)
		if err != nil {
			return nil, err
		}
		out[i] = d
	}
	return out, nil
}

// settle gives a new store the layout of the first BuildStream artifact
// written, or of the first BuildStream 1 artifact asked about: BuildStream
// 1.6 asks for a ref before it pushes its blobs, and BuildStream 1's
// layout is bst-artifact-server's, so that server can take the directory
// back. Asking for a BuildStream 2 ref decides nothing: bst-cache with no
// format set asks for both at once, and which arrives first must not
// decide (BuildStream 2 clients make the store BuildStream 2's by their
// first blob).
func (s *Server) settle(e entry, written bool) {
	if e.kind == cache.KindAsset || !written && e.kind != cache.KindBst1Artifact {
		return
	}
	s.store.Settle(e.kind.Layout())
	if s.allowWrites {
		if err := s.putEmpty(); err != nil {
			s.logf("%v", err)
		}
	}
}

// resolved is an index entry read back: the digest it names and every root
// that must be present for it to count.
type resolved struct {
	digest  digest.Digest
	roots   cache.Roots
	expired bool
}

// errNoEntry: the index has no such entry.
var errNoEntry = errors.New("no entry")

// resolve reads an index entry. A BuildStream 2 Artifact needs its files,
// metadata and logs; its optional trees (buildtree and the like) are only
// included with full, as BuildStream pulls them only on request.
func (s *Server) resolve(e entry, full bool) (resolved, error) {
	data, err := s.store.GetRef(e.kind, e.ref)
	if errors.Is(err, cache.ErrNotFound) {
		return resolved{}, errNoEntry
	}
	if err != nil {
		return resolved{}, err
	}
	if e.kind != cache.KindAsset {
		n, err := buildstream.ReadRef(e.kind, data)
		if err != nil {
			return resolved{}, fmt.Errorf("ref %s: %w", e.ref, err)
		}
		if e.kind != cache.KindBst1Artifact {
			// A store that BuildStream 2 filled keeps the proto only as a
			// ref: serve it from CAS too.
			if ok, err := s.store.Has(n.Digest); err != nil {
				return resolved{}, err
			} else if !ok {
				if err := s.store.PutBytes(n.Digest, data); err != nil {
					return resolved{}, err
				}
			}
		}
		if full {
			n.Required.Add(n.Optional)
		}
		return resolved{digest: n.Digest, roots: n.Required}, nil
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		return resolved{}, fmt.Errorf("index record %s: %w", e.ref, err)
	}
	dg, err := digest.NewFromString(rec.Digest)
	if err != nil {
		return resolved{}, fmt.Errorf("index record %s: %w", e.ref, err)
	}
	blobs, err := parseDigests(rec.RefBlobs)
	if err != nil {
		return resolved{}, err
	}
	dirs, err := parseDigests(rec.RefDirs)
	if err != nil {
		return resolved{}, err
	}
	roots := cache.Roots{Blobs: blobs, Dirs: dirs}
	if rec.Type == assetDirectory {
		roots.Dirs = append(roots.Dirs, dg)
	} else {
		roots.Blobs = append(roots.Blobs, dg)
	}
	expired := rec.ExpireAtUnixS > 0 && time.Now().Unix() >= rec.ExpireAtUnixS
	return resolved{digest: dg, roots: roots, expired: expired}, nil
}

// lookup finds the first of uris the index holds completely. Entries whose
// content is incomplete or expired are passed over. With an upstream, a
// BuildStream ref the store lacks, or holds incomplete, is filled from it
// first.
func (s *Server) lookup(ctx context.Context, typ assetType, uris []string, qualifiers []*assetpb.Qualifier, oldest time.Time) (string, digest.Digest, error) {
	if len(uris) == 0 {
		return "", digest.Digest{}, status.Error(codes.InvalidArgument, "no uris in the request")
	}
	var why []string
	var first entry // the miss counts under the kind of the first URI
	for i, uri := range uris {
		e, err := entryFor(typ, uri, qualifiers)
		if err != nil {
			return "", digest.Digest{}, err
		}
		if i == 0 {
			first = e
		}
		s.settle(e, false)
		s.refsMu.RLock() // no eviction between the check and the lease
		d, closure, whyNot, err := s.lookupEntry(e, uri, oldest)
		if err == nil && whyNot == "" {
			// The client reads the ref's blobs next.
			s.lend(clientOf(ctx), closure...)
		}
		s.refsMu.RUnlock()
		if err != nil {
			return "", digest.Digest{}, err
		}
		if whyNot != "" && s.fillable(e) {
			d, whyNot, err = s.fill(ctx, e, uri, oldest, whyNot)
			if err != nil {
				return "", digest.Digest{}, err
			}
		}
		if whyNot == "" {
			s.count.looked(lookupOf(e), true)
			return uri, d, nil
		}
		if whyNot != noEntry {
			why = append(why, whyNot)
		}
	}
	s.count.looked(lookupOf(first), false)
	msg := "not found: " + strings.Join(uris, ", ")
	if len(why) > 0 {
		msg += " (" + strings.Join(why, "; ") + ")"
	}
	return "", digest.Digest{}, status.Error(codes.NotFound, msg)
}

// noEntry is lookupEntry's whyNot when the index has no entry at all.
const noEntry = "no entry"

// lookupEntry reads one entry from the store: the digest it names and its
// whole closure when it is there whole and current, else why not (noEntry
// when it is not there at all, or an eviction pass is deleting it). A hit
// is marked used. Callers hold refsMu for reading, and lend the closure of
// a hit to the client.
func (s *Server) lookupEntry(e entry, uri string, oldest time.Time) (digest.Digest, []digest.Digest, string, error) {
	if s.quota != nil && s.quota.refGoing(e.kind, e.ref) {
		return digest.Digest{}, nil, noEntry, nil
	}
	r, err := s.resolve(e, false)
	if errors.Is(err, errNoEntry) {
		return digest.Digest{}, nil, noEntry, nil
	}
	if err != nil {
		return digest.Digest{}, nil, "", status.Errorf(codes.Internal, "reading %s: %v", uri, err)
	}
	if r.expired {
		return digest.Digest{}, nil, uri + " has expired", nil
	}
	if !oldest.IsZero() {
		if info, err := s.store.RefInfo(e.kind, e.ref); err == nil && info.Modified.Before(oldest) {
			return digest.Digest{}, nil, uri + " is older than oldest_content_accepted", nil
		}
	}
	all, missing, err := s.store.ClosureOf(r.roots)
	if errors.Is(err, cache.ErrDigestMismatch) {
		s.logf("%s: %v: treated as absent", uri, err)
		return digest.Digest{}, nil, uri + " names a corrupt object", nil
	}
	if err != nil {
		return digest.Digest{}, nil, "", status.Errorf(codes.Internal, "checking %s: %v", uri, err)
	}
	if len(missing) > 0 {
		s.logf("%s names %d blobs this server does not hold, e.g. %s: treated as absent", uri, len(missing), missing[0])
		return digest.Digest{}, nil, fmt.Sprintf("%s is incomplete (%d blobs missing)", uri, len(missing)), nil
	}
	if s.quota != nil {
		s.store.TouchRef(e.kind, e.ref)
		s.quota.useRef(e.kind, e.ref, time.Now())
	}
	return r.digest, all, "", nil
}

// fill asks the upstreams for an entry the store lacks (whyNot says how)
// and reads it again once they filled it. An upstream that holds it
// nowhere whole leaves it as it was: a miss.
func (s *Server) fill(ctx context.Context, e entry, uri string, oldest time.Time, whyNot string) (digest.Digest, string, error) {
	up, uctx := s.upstreamFor(ctx)
	if up == nil {
		return digest.Digest{}, whyNot, nil
	}
	start := time.Now()
	found, reason, err := up.FillRef(uctx, e.kind, e.ref)
	if err != nil {
		if ctx.Err() != nil {
			return digest.Digest{}, "", status.FromContextError(ctx.Err()).Err()
		}
		s.logf("upstream: %s: %v", uri, err)
		return digest.Digest{}, whyNot + "; upstream: " + err.Error(), nil
	}
	if !found {
		s.logf("upstream: %s: miss (%s) in %s", uri, reason, time.Since(start).Round(time.Millisecond))
		if whyNot == noEntry {
			return digest.Digest{}, "upstream: " + reason, nil
		}
		return digest.Digest{}, whyNot + "; upstream: " + reason, nil
	}
	s.logf("upstream: %s: filled in %s", uri, time.Since(start).Round(time.Millisecond))
	s.refsMu.RLock() // no eviction between the check and the account
	defer s.refsMu.RUnlock()
	d, closure, whyNot, err := s.lookupEntry(e, uri, oldest)
	if err == nil && whyNot == "" {
		s.adopt(e, closure)
		s.lend(clientOf(ctx), closure...)
	}
	return d, whyNot, err
}

// missingError is FAILED_PRECONDITION listing blobs a push names that the
// store lacks, in the REAPI PreconditionFailure form.
func missingError(what string, missing []digest.Digest) error {
	const maxListed = 1000
	pf := &errdetails.PreconditionFailure{}
	for i, d := range missing {
		if i == maxListed {
			break
		}
		pf.Violations = append(pf.Violations, &errdetails.PreconditionFailure_Violation{
			Type: "MISSING", Subject: "blobs/" + d.Hash + "/" + fmt.Sprint(d.Size),
		})
	}
	shown := digestStrings(missing[:min(len(missing), 5)])
	st := status.Newf(codes.FailedPrecondition, "%s names %d blobs this server does not hold: %s%s",
		what, len(missing), strings.Join(shown, ", "), map[bool]string{true: ", ...", false: ""}[len(missing) > 5])
	if withDetails, err := st.WithDetails(pf); err == nil {
		st = withDetails
	}
	return st.Err()
}

// writeEntries writes index entries for uris once everything roots names is
// present. rawFor gives the bytes to store for an entry of a given kind.
func (s *Server) writeEntries(ctx context.Context, typ assetType, uris []string, qualifiers []*assetpb.Qualifier, roots cache.Roots, rawFor func(uri string, e entry) ([]byte, error)) error {
	entries := make([]entry, len(uris))
	for i, uri := range uris {
		e, err := entryFor(typ, uri, qualifiers)
		if err != nil {
			return err
		}
		s.settle(e, true)
		entries[i] = e
	}
	if err := s.fillClosure(ctx, roots); err != nil {
		return status.Errorf(codes.Unavailable, "filling the pushed content from upstream: %v", err)
	}
	if err := s.setEntries(uris, entries, roots, rawFor); err != nil {
		return err
	}
	return s.replicate(ctx, entries)
}

// setEntries writes the entries for uris once everything roots names is
// present.
func (s *Server) setEntries(uris []string, entries []entry, roots cache.Roots, rawFor func(uri string, e entry) ([]byte, error)) error {
	s.refsMu.RLock()
	defer s.refsMu.RUnlock()
	all, missing, err := s.store.ClosureOf(roots)
	if err != nil {
		return status.Errorf(codes.Internal, "checking the pushed content: %v", err)
	}
	if s.quota != nil && len(missing) == 0 { // found, but eviction is removing them
		missing = s.quota.beingRemoved(all)
	}
	if len(missing) > 0 {
		return missingError(strings.Join(uris, ", "), missing)
	}
	for i, e := range entries {
		data, err := rawFor(uris[i], e)
		if err != nil {
			return err
		}
		if s.quota != nil {
			s.quota.claim(e.kind, e.ref)
		}
		if err := s.store.SetRef(e.kind, e.ref, data); err != nil {
			return status.Errorf(codes.Internal, "writing %s: %v", e.ref, err)
		}
		if s.quota != nil {
			s.quota.setRef(e.kind, e.ref, all, time.Now())
		}
	}
	return nil
}

// replicate tells the replicator the BuildStream entries just written,
// by kind; the server's own asset records stay local.
func (s *Server) replicate(ctx context.Context, entries []entry) error {
	if s.replicator == nil {
		return nil
	}
	byKind := map[cache.Kind][]string{}
	for _, e := range entries {
		if e.kind != cache.KindAsset {
			byKind[e.kind] = append(byKind[e.kind], e.ref)
		}
	}
	for kind, refs := range byKind {
		if err := s.replicator.Replicate(ctx, kind, refs); err != nil {
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			return status.Errorf(codes.Unavailable, "stored here, but not replicated: %v", err)
		}
	}
	return nil
}
