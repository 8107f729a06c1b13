package transfer

import (
	"context"
	"errors"
	"fmt"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
	"github.com/bst-cache/bst-cache/remotes"
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

// other is the same kind of ref in the other artifact format, if any.
func (k Kind) other() (Kind, bool) {
	switch k {
	case Bst1Artifact:
		return Bst2Artifact, true
	case Bst2Artifact:
		return Bst1Artifact, true
	}
	return 0, false
}

// format names the configuration's format for k.
func (k Kind) format() string {
	if k == Bst1Artifact {
		return string(config.FormatBst1)
	}
	return string(config.FormatBst2)
}

// remoteKind is the kind of ref a listing service is asked for.
func (k Kind) remoteKind() cache.Kind {
	switch k {
	case Bst1Artifact:
		return cache.KindBst1Artifact
	case Bst2Artifact:
		return cache.KindBst2Artifact
	}
	return cache.KindSource
}

// StoreKind is where the local store keeps refs of this kind.
func (k Kind) StoreKind() cache.Kind {
	if k == Bst2Source {
		return cache.KindSource
	}
	return cache.KindArtifact
}

// lookup asks one cache's index for a ref: the digest it names (the root
// Directory for bst1, the Artifact or Source blob for bst2). A miss is
// remotes.ErrNotFound.
func (k Kind) lookup(ctx context.Context, r remote, caps remotes.Capabilities, ref string) (digest.Digest, error) {
	switch k {
	case Bst1Artifact:
		if caps.RemoteAssetFetch {
			return r.FetchDirectory(ctx, buildstream.URNBst1Artifact+ref)
		}
		if caps.ReferenceStorage {
			return r.GetReference(ctx, ref)
		}
		return digest.Digest{}, errNoIndex
	case Bst2Artifact:
		if !caps.RemoteAssetFetch {
			return digest.Digest{}, errNoIndex
		}
		return r.FetchBlob(ctx, buildstream.URNBst2Artifact+ref)
	default:
		if !caps.RemoteAssetFetch {
			return digest.Digest{}, errNoIndex
		}
		return r.FetchBlob(ctx, buildstream.URNBst2Source+ref)
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
	// virtual: the proto blob is only in the ref file (a read-only store).
	virtual bool
}

// entryFor turns what an index named into an entry; for bst2 the proto
// (proto, already verified against d) says what it names.
func (k Kind) entryFor(d digest.Digest, protoData []byte) (entry, error) {
	en := entry{digest: d, content: protoData}
	var err error
	switch k {
	case Bst1Artifact:
		en.content = buildstream.V1RefContent(d)
		en.roots.Dirs = []digest.Digest{d}
		return en, err
	case Bst2Source:
		en.roots, _, err = buildstream.ProtoRoots(protoData, true)
	default:
		var art *bspb.Artifact
		if art, err = buildstream.ParseArtifact(protoData); err == nil {
			en.roots, en.optional, err = buildstream.ArtifactRoots(art)
			en.failed = !art.GetBuildSuccess()
		}
	}
	en.roots.Blobs = append(en.roots.Blobs, d)
	return en, err
}

// localEntry reads a ref from the local store.
func (k Kind) localEntry(s *cache.Store, ref string) (entry, error) {
	data, err := s.GetRef(k.StoreKind(), ref)
	if err != nil {
		return entry{}, err
	}
	if k == Bst1Artifact {
		d, err := buildstream.ParseV1Ref(data)
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
	// a push) needs it as a blob too. A read-only run knows it from the
	// ref file.
	if ok, err := s.Has(e.digest); err != nil {
		return entry{}, err
	} else if !ok && s.ReadOnly() {
		e.roots.Blobs = e.roots.Blobs[:len(e.roots.Blobs)-1]
		e.virtual = true
	} else if !ok {
		if err := s.PutBytes(e.digest, data); err != nil {
			return entry{}, err
		}
	}
	return e, nil
}

// writeIndex records refs -> e on a cache, once its content is there:
// every ref of one artifact (strong and weak key) in one call.
func (k Kind) writeIndex(ctx context.Context, r remote, caps remotes.Capabilities, refs []string, e entry, present cache.Roots) error {
	urns := func(prefix string) []string {
		out := make([]string, len(refs))
		for i, ref := range refs {
			out[i] = prefix + ref
		}
		return out
	}
	switch k {
	case Bst1Artifact:
		if caps.RemoteAssetPush {
			return r.PushDirectory(ctx, urns(buildstream.URNBst1Artifact), e.digest)
		}
		if caps.ReferenceStorage && caps.AllowUpdates {
			return r.UpdateReference(ctx, refs, e.digest)
		}
		return errNoPushIndex
	case Bst2Artifact, Bst2Source:
		if !caps.RemoteAssetPush {
			return errNoPushIndex
		}
		prefix := buildstream.URNBst2Artifact
		if k == Bst2Source {
			prefix = buildstream.URNBst2Source
		}
		var blobs []digest.Digest
		for _, b := range present.Blobs {
			if b != e.digest {
				blobs = append(blobs, b)
			}
		}
		return r.PushBlob(ctx, urns(prefix), e.digest, blobs, present.Dirs)
	}
	return errNoPushIndex
}

// errNoPushIndex: the cache cannot record refs of this kind.
var errNoPushIndex = errors.New("cannot record refs: no Remote Asset push and no writable ReferenceStorage")
