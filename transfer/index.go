package transfer

import (
	"context"
	"errors"
	"fmt"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/remotes"
)

// BuildStream's Remote Asset URN prefixes.
const (
	urnBst1     = "urn:fdc:buildstream.build:2020:v1:"
	urnArtifact = "urn:fdc:buildstream.build:2020:artifact:"
	urnSource   = "urn:fdc:buildstream.build:2020:source:"
)

// Kind says what refs name: BuildStream 1 artifacts, BuildStream 2
// artifacts or BuildStream 2 sources.
type Kind int

// The kinds.
const (
	Bst1Artifact Kind = iota
	Bst2Artifact
	Bst2Source
)

// KindFor picks the kind for a format and a ref kind.
func KindFor(f config.Format, k cache.Kind) (Kind, error) {
	switch {
	case f == config.FormatBst1 && k == cache.KindArtifact:
		return Bst1Artifact, nil
	case f == config.FormatBst2 && k == cache.KindArtifact:
		return Bst2Artifact, nil
	case f == config.FormatBst2 && k == cache.KindSource:
		return Bst2Source, nil
	}
	return 0, fmt.Errorf("format %s has no %s refs", f, k)
}

// storeKind is where the local store keeps refs of this kind.
func (k Kind) storeKind() cache.Kind {
	if k == Bst2Source {
		return cache.KindSource
	}
	return cache.KindArtifact
}

// lookup asks one cache's index for a ref: the digest it names (the root
// Directory for bst1, the Artifact or Source blob for bst2). A miss is
// remotes.ErrNotFound.
func (k Kind) lookup(ctx context.Context, r *remotes.Remote, caps remotes.Capabilities, ref string) (digest.Digest, error) {
	switch k {
	case Bst1Artifact:
		if caps.RemoteAssetFetch {
			return r.FetchDirectory(ctx, urnBst1+ref)
		}
		if caps.ReferenceStorage {
			return r.GetReference(ctx, ref)
		}
		return digest.Digest{}, errNoIndex
	case Bst2Artifact:
		if !caps.RemoteAssetFetch {
			return digest.Digest{}, errNoIndex
		}
		return r.FetchBlob(ctx, urnArtifact+ref)
	default:
		if !caps.RemoteAssetFetch {
			return digest.Digest{}, errNoIndex
		}
		return r.FetchBlob(ctx, urnSource+ref)
	}
}

// errNoIndex: the cache has no index this kind can use.
var errNoIndex = errors.New("no index for this format (no Remote Asset fetch or ReferenceStorage)")

// entry is a ref's local content and what it names in CAS.
type entry struct {
	// digest is what the index names.
	digest digest.Digest
	// content is the local ref file: a serialized Digest for bst1, the
	// Artifact or Source proto itself for bst2.
	content []byte
	// roots are the trees and blobs that must be present; optional are
	// trees BuildStream fetches only on request (buildtrees).
	roots    cache.Roots
	optional cache.Roots
	// failed is set for a bst2 artifact whose build did not succeed.
	failed bool
}

// entryFor turns what an index named into an entry; for bst2 the proto
// (proto, already verified against d) says what it names.
func (k Kind) entryFor(d digest.Digest, protoData []byte) (entry, error) {
	switch k {
	case Bst1Artifact:
		content, err := proto.Marshal(d.ToProto())
		return entry{digest: d, content: content, roots: cache.Roots{Dirs: []digest.Digest{d}}}, err
	case Bst2Source:
		roots, err := cache.SourceRoots(protoData)
		roots.Blobs = append(roots.Blobs, d)
		return entry{digest: d, content: protoData, roots: roots}, err
	}
	art, err := cache.ParseArtifact(protoData)
	if err != nil {
		return entry{}, err
	}
	req, err := cache.ArtifactRoots(art, false)
	if err != nil {
		return entry{}, err
	}
	all, _ := cache.ArtifactRoots(art, true)
	req.Blobs = append(req.Blobs, d)
	return entry{digest: d, content: protoData, roots: req,
		optional: cache.Roots{Dirs: all.Dirs[len(req.Dirs):]}, failed: !art.GetBuildSuccess()}, nil
}

// localEntry reads a ref from the local store.
func (k Kind) localEntry(s *cache.Store, ref string) (entry, error) {
	data, err := s.GetRef(k.storeKind(), ref)
	if err != nil {
		return entry{}, err
	}
	if k == Bst1Artifact {
		var pd repb.Digest
		if err := proto.Unmarshal(data, &pd); err != nil {
			return entry{}, fmt.Errorf("local ref %s: %w", ref, err)
		}
		d, err := digest.NewFromProto(&pd)
		if err != nil {
			return entry{}, fmt.Errorf("local ref %s: %w", ref, err)
		}
		return k.entryFor(d, nil)
	}
	e, err := k.entryFor(digest.NewFromBlob(data), data)
	if err != nil {
		return entry{}, fmt.Errorf("local ref %s: %w", ref, err)
	}
	// BuildStream 2 keeps the proto as the ref file only; the closure (and
	// a push) needs it as a blob too.
	if ok, err := s.Has(e.digest); err != nil {
		return entry{}, err
	} else if !ok {
		if err := s.PutBytes(e.digest, data); err != nil {
			return entry{}, err
		}
	}
	return e, nil
}

// writeIndex records ref -> e on a cache, once its content is there.
func (k Kind) writeIndex(ctx context.Context, r *remotes.Remote, caps remotes.Capabilities, ref string, e entry, present cache.Roots) error {
	switch k {
	case Bst1Artifact:
		if caps.RemoteAssetPush {
			return r.PushDirectory(ctx, urnBst1+ref, e.digest)
		}
		if caps.ReferenceStorage && caps.AllowUpdates {
			return r.UpdateReference(ctx, []string{ref}, e.digest)
		}
		return errNoPushIndex
	case Bst2Artifact, Bst2Source:
		if !caps.RemoteAssetPush {
			return errNoPushIndex
		}
		urn := urnArtifact + ref
		if k == Bst2Source {
			urn = urnSource + ref
		}
		var blobs []digest.Digest
		for _, b := range present.Blobs {
			if b != e.digest {
				blobs = append(blobs, b)
			}
		}
		return r.PushBlob(ctx, urn, e.digest, blobs, present.Dirs)
	}
	return errNoPushIndex
}

// errNoPushIndex: the cache cannot record refs of this kind.
var errNoPushIndex = errors.New("cannot record refs: no Remote Asset push and no writable ReferenceStorage")
