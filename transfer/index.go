package transfer

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/remotes"
)

// Refs are of one cache.Kind: cache.KindBst1Artifact,
// cache.KindBst2Artifact or cache.KindSource, or cache.KindArtifact for an
// artifact of either format (no format set): each cache is asked for both
// at once, and what it holds is used.

// KindFor picks the kind of refs for a format (config.Config's Format:
// cache.KindArtifact when nobody set one) and a ref kind
// (cache.KindArtifact or cache.KindSource).
func KindFor(f, k cache.Kind) (cache.Kind, error) {
	switch {
	case k == cache.KindArtifact:
		return f, nil
	case k == cache.KindSource && f != cache.KindBst1Artifact:
		return k, nil
	}
	return "", fmt.Errorf("format %s has no %s refs", f.Format(), k)
}

// otherFormat is the same kind of ref in the other artifact format, if any.
func otherFormat(k cache.Kind) (cache.Kind, bool) {
	switch k {
	case cache.KindBst1Artifact:
		return cache.KindBst2Artifact, true
	case cache.KindBst2Artifact:
		return cache.KindBst1Artifact, true
	}
	return "", false
}

// lookup asks one cache's index for a ref: the digest it names (the root
// Directory for bst1, the Artifact or Source blob for bst2). A miss is
// remotes.ErrNotFound.
func lookup(ctx context.Context, k cache.Kind, r remote, caps remotes.Capabilities, ref string) (digest.Digest, error) {
	switch k {
	case cache.KindBst1Artifact:
		if caps.RemoteAssetFetch {
			return r.FetchDirectory(ctx, buildstream.URNBst1Artifact+ref)
		}
		if caps.ReferenceStorage {
			return r.GetReference(ctx, ref)
		}
		return digest.Digest{}, errNoIndex
	case cache.KindBst2Artifact:
		if !caps.RemoteAssetFetch {
			return digest.Digest{}, errNoIndex
		}
		return r.FetchBlob(ctx, buildstream.URNBst2Artifact+ref)
	case cache.KindSource:
		if !caps.RemoteAssetFetch {
			return digest.Digest{}, errNoIndex
		}
		return r.FetchBlob(ctx, buildstream.URNBst2Source+ref)
	}
	return digest.Digest{}, fmt.Errorf("refs of kind %s have no index", k)
}

// found is what one cache's index named for a ref in one kind.
type found struct {
	kind   cache.Kind
	digest digest.Digest
	err    error
}

// lookupAll asks one cache's index for ref in every kind it may be, at
// once: one round per cache whatever the number of kinds.
func lookupAll(ctx context.Context, k cache.Kind, r remote, caps remotes.Capabilities, ref string) []found {
	kinds := k.Kinds()
	out := make([]found, len(kinds))
	var wg sync.WaitGroup
	for i, kind := range kinds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := lookup(ctx, kind, r, caps, ref)
			out[i] = found{kind, d, err}
		}()
	}
	wg.Wait()
	return out
}

// errNoIndex: the cache has no index this kind can use.
var errNoIndex = errors.New("no index for this format (no Remote Asset fetch or ReferenceStorage)")

// entry is a ref's local content and what it names in CAS.
type entry struct {
	// kind is the ref's kind: never cache.KindArtifact.
	kind cache.Kind
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
	// read are Directories of the artifact read already, checked against
	// their digests (a pull's walk: its top two levels), for metaFile.
	read map[digest.Digest][]byte
}

// entryFor turns what an index named into an entry; for bst2 the proto
// (protoData, already verified against d) says what it names.
func entryFor(k cache.Kind, d digest.Digest, protoData []byte) (entry, error) {
	if k == cache.KindBst1Artifact {
		protoData = buildstream.V1RefContent(d)
	}
	en, err := entryOf(k, protoData)
	if err == nil && en.digest != d {
		err = fmt.Errorf("%s names %s, not %s", k, en.digest, d)
	}
	return en, err
}

// entryOf reads a ref's content, as buildstream.ReadRef reads it.
func entryOf(k cache.Kind, content []byte) (entry, error) {
	n, err := buildstream.ReadRef(k, content)
	if err != nil {
		return entry{}, err
	}
	if k == cache.KindBst1Artifact {
		content = buildstream.V1RefContent(n.Digest) // as every writer of a bst1 ref writes it
	}
	return entry{kind: k, digest: n.Digest, content: content, roots: n.Required, optional: n.Optional, failed: n.Failed}, nil
}

// localEntry reads a ref of kind k (of either artifact format for
// cache.KindArtifact, BuildStream 1's first) from the local store,
// whatever its layout.
func localEntry(s *cache.Store, k cache.Kind, ref string) (entry, error) {
	kinds := k.Kinds()
	for i, kind := range kinds {
		en, err := localEntryOf(s, kind, ref)
		if errors.Is(err, cache.ErrNotFound) && i < len(kinds)-1 {
			continue
		}
		return en, err
	}
	return entry{}, fmt.Errorf("ref %s: %w", ref, cache.ErrNotFound)
}

func localEntryOf(s *cache.Store, k cache.Kind, ref string) (entry, error) {
	data, err := s.GetRef(k, ref)
	if err != nil {
		return entry{}, err
	}
	e, err := entryOf(k, data)
	if err != nil {
		return entry{}, fmt.Errorf("local ref %s: %w", ref, err)
	}
	if k == cache.KindBst1Artifact {
		return e, nil
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
func writeIndex(ctx context.Context, r remote, caps remotes.Capabilities, refs []string, e entry, present cache.Roots) error {
	urns := func(prefix string) []string {
		out := make([]string, len(refs))
		for i, ref := range refs {
			out[i] = prefix + ref
		}
		return out
	}
	switch e.kind {
	case cache.KindBst1Artifact:
		if caps.RemoteAssetPush {
			return r.PushDirectory(ctx, urns(buildstream.URNBst1Artifact), e.digest)
		}
		if caps.ReferenceStorage && caps.AllowUpdates {
			return r.UpdateReference(ctx, refs, e.digest)
		}
		return errNoPushIndex
	case cache.KindBst2Artifact, cache.KindSource:
		if !caps.RemoteAssetPush {
			return errNoPushIndex
		}
		prefix := buildstream.URNBst2Artifact
		if e.kind == cache.KindSource {
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
