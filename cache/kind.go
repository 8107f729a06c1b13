package cache

import "fmt"

// Kind says which BuildStream format and kind of ref something is: a ref
// (an artifact of either BuildStream, a source, a server's other asset),
// the format refs are read in (KindBst1Artifact or KindBst2Artifact when
// one is set, KindArtifact for either), and a store's layout (that of the
// BuildStream whose artifacts it is the cache of: Layout).
type Kind string

// The ref kinds.
const (
	// KindArtifact: an artifact of either BuildStream. ListRefs lists
	// both; GetRef, SetRef, RefPath and DeleteRef take it as the store
	// layout's own. Transfers with no format set look it up as either, and
	// a store opened with it takes the layout of what is written first.
	KindArtifact Kind = "artifact"
	// KindSource: a serialized buildstream.v2.Source (source_protos/).
	KindSource Kind = "source"
	// KindBst1Artifact: BuildStream 1 refs (cas/refs/heads/) whatever the
	// store's layout; a server keeps both generations side by side.
	KindBst1Artifact Kind = "bst1-artifact"
	// KindBst2Artifact: BuildStream 2 artifact protos (artifacts/refs/)
	// whatever the store's layout.
	KindBst2Artifact Kind = "bst2-artifact"
	// KindAsset: a server's index of other Remote Asset URIs (assets/).
	KindAsset Kind = "asset"
)

// Kinds lists every ref kind a store can hold, each directory once.
var Kinds = []Kind{KindBst1Artifact, KindBst2Artifact, KindSource, KindAsset}

// Kinds are the kinds k stands for: both BuildStream artifact formats
// for KindArtifact, else k.
func (k Kind) Kinds() []Kind {
	if k == KindArtifact {
		return []Kind{KindBst1Artifact, KindBst2Artifact}
	}
	return []Kind{k}
}

// Layout is the store layout a kind of ref is at home in, named by the
// artifact kind it is BuildStream's own cache for: KindBst1Artifact for
// BuildStream 1's artifacts, KindBst2Artifact for the rest, and
// KindArtifact (not decided: either) for KindArtifact.
func (k Kind) Layout() Kind {
	switch k {
	case KindBst1Artifact, KindArtifact:
		return k
	}
	return KindBst2Artifact
}

// The format names of the configuration file and --format.
const (
	formatBst1 = "bst1"
	formatBst2 = "bst2"
)

// ParseFormat reads a BuildStream format as the configuration and --format
// name it: "bst1" is KindBst1Artifact, "bst2" KindBst2Artifact.
func ParseFormat(s string) (Kind, error) {
	switch s {
	case formatBst1:
		return KindBst1Artifact, nil
	case formatBst2:
		return KindBst2Artifact, nil
	}
	return "", fmt.Errorf("format %q: want %q or %q", s, formatBst1, formatBst2)
}

// Format names the format of k's layout as ParseFormat reads it: "bst1"
// or "bst2", and "" for KindArtifact (no format: either).
func (k Kind) Format() string {
	switch k.Layout() {
	case KindBst1Artifact:
		return formatBst1
	case KindBst2Artifact:
		return formatBst2
	}
	return ""
}

// valid reports whether k is one of the kinds above.
func (k Kind) valid() bool {
	switch k {
	case KindArtifact, KindSource, KindBst1Artifact, KindBst2Artifact, KindAsset:
		return true
	}
	return false
}
