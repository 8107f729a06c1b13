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

// ProtoRoots lists what a serialized BuildStream 2 proto names in CAS: an
// Artifact (see ArtifactRoots) or, with source, a Source (its files, all
// required).
func ProtoRoots(data []byte, source bool) (required, optional cache.Roots, err error) {
	if source {
		required, err = sourceRoots(data)
		return required, cache.Roots{}, err
	}
	a, err := ParseArtifact(data)
	if err != nil {
		return cache.Roots{}, cache.Roots{}, err
	}
	return ArtifactRoots(a)
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
