package buildstream

import (
	"fmt"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// BuildStream's Remote Asset URN prefixes; the ref follows the prefix.
const (
	// URNBst1Artifact names a BuildStream 1 artifact's root Directory.
	URNBst1Artifact = "urn:fdc:buildstream.build:2020:v1:"
	// URNBst2Artifact names a BuildStream 2 Artifact proto blob.
	URNBst2Artifact = "urn:fdc:buildstream.build:2020:artifact:"
	// URNBst2Source names a BuildStream 2 Source proto blob.
	URNBst2Source = "urn:fdc:buildstream.build:2020:source:"
)

// digestOf converts an optional digest field; ok is false when it is unset.
func digestOf(d *repb.Digest) (digest.Digest, bool, error) {
	if d == nil {
		return digest.Digest{}, false, nil
	}
	dg, err := digest.NewFromProto(d)
	if err != nil {
		return digest.Digest{}, false, fmt.Errorf("%w: %v", cache.ErrBadDirectory, err)
	}
	return dg, true, nil
}

// ParseArtifact decodes a BuildStream 2 Artifact message.
func ParseArtifact(data []byte) (*bspb.Artifact, error) {
	a := &bspb.Artifact{}
	if err := proto.Unmarshal(data, a); err != nil {
		return nil, fmt.Errorf("not a buildstream.v2.Artifact: %w", err)
	}
	return a, nil
}

// ArtifactRoots lists what a BuildStream 2 Artifact names in CAS: required
// are the files, metadata, public data and logs; optional the trees
// BuildStream pulls only on request (buildtree, sources, buildroot,
// subsandboxes).
func ArtifactRoots(a *bspb.Artifact) (required, optional cache.Roots, err error) {
	r := &required
	add := func(list *[]digest.Digest, d *repb.Digest) error {
		dg, ok, err := digestOf(d)
		if ok {
			*list = append(*list, dg)
		}
		return err
	}
	errs := []error{
		add(&r.Dirs, a.GetFiles()),
		add(&r.Blobs, a.GetPublicData()),
		add(&r.Blobs, a.GetLowDiversityMeta()),
		add(&r.Blobs, a.GetHighDiversityMeta()),
	}
	for _, l := range a.GetLogs() {
		errs = append(errs, add(&r.Blobs, l.GetDigest()))
	}
	o := &optional.Dirs
	errs = append(errs, add(o, a.GetBuildtree()), add(o, a.GetSources()), add(o, a.GetBuildroot()))
	for _, d := range a.GetBuildsandbox().GetSubsandboxDigests() {
		errs = append(errs, add(o, d))
	}
	for _, err := range errs {
		if err != nil {
			return cache.Roots{}, cache.Roots{}, err
		}
	}
	return required, optional, nil
}

// Named is what a stored ref names (ReadRef).
type Named struct {
	// Digest is what the ref's index entry names: BuildStream 1's root
	// Directory, BuildStream 2's Artifact or Source message.
	Digest digest.Digest
	// Required are the trees and blobs that must all be present for the
	// ref to count: BuildStream 1's whole tree; for BuildStream 2 the
	// message itself (the last of Blobs) and what it needs
	// (ArtifactRoots, a Source's files).
	Required cache.Roots
	// Optional are the trees BuildStream pulls only on request
	// (buildtrees and the like; ArtifactRoots).
	Optional cache.Roots
	// Failed: a BuildStream 2 artifact of a build that did not succeed.
	Failed bool
}

// ReadRef reads the content of a stored ref of kind k (its ref file, or
// what an index names): for cache.KindBst1Artifact a serialized Digest of
// the root Directory, for cache.KindBst2Artifact an Artifact message, for
// cache.KindSource a Source message. Other kinds are not BuildStream's
// and are an error.
func ReadRef(k cache.Kind, data []byte) (Named, error) {
	d, err := RefDigest(k == cache.KindBst1Artifact, data)
	if err != nil {
		return Named{}, err
	}
	n := Named{Digest: d}
	switch k {
	case cache.KindBst1Artifact:
		n.Required.Dirs = []digest.Digest{d}
		return n, nil
	case cache.KindBst2Artifact:
		a, err := ParseArtifact(data)
		if err != nil {
			return Named{}, err
		}
		if n.Required, n.Optional, err = ArtifactRoots(a); err != nil {
			return Named{}, err
		}
		n.Failed = !a.GetBuildSuccess()
	case cache.KindSource:
		if n.Required, err = sourceRoots(data); err != nil {
			return Named{}, err
		}
	default:
		return Named{}, fmt.Errorf("refs of kind %s are not BuildStream's own", k)
	}
	n.Required.Blobs = append(n.Required.Blobs, d)
	return n, nil
}

// sourceRoots lists what a BuildStream 2 Source message names in CAS.
func sourceRoots(data []byte) (cache.Roots, error) {
	s := &bspb.Source{}
	if err := proto.Unmarshal(data, s); err != nil {
		return cache.Roots{}, fmt.Errorf("not a buildstream.v2.Source: %w", err)
	}
	var r cache.Roots
	d, ok, err := digestOf(s.GetFiles())
	if ok {
		r.Dirs = append(r.Dirs, d)
	}
	return r, err
}
