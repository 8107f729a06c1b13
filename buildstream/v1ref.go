package buildstream

import (
	"fmt"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"
)

// V1RefContent is what BuildStream 1 (and bst-artifact-server) keep in a
// ref file, cas/refs/heads/REF: the serialized Digest of the artifact's
// root Directory.
func V1RefContent(root digest.Digest) []byte {
	data, _ := proto.Marshal(root.ToProto()) // a Digest always marshals
	return data
}

// ParseV1Ref reads a BuildStream 1 ref file's content.
func ParseV1Ref(data []byte) (digest.Digest, error) {
	var pd repb.Digest
	if err := proto.Unmarshal(data, &pd); err != nil {
		return digest.Digest{}, fmt.Errorf("not a BuildStream 1 ref (a serialized Digest): %w", err)
	}
	d, err := digest.NewFromProto(&pd)
	if err != nil {
		return digest.Digest{}, fmt.Errorf("not a BuildStream 1 ref: %w", err)
	}
	return d, nil
}

// RefDigest is what a stored ref names: for BuildStream 1 (v1) the root
// Directory its content records, for BuildStream 2 the digest of the
// Artifact or Source message that is its content.
func RefDigest(v1 bool, data []byte) (digest.Digest, error) {
	if v1 {
		return ParseV1Ref(data)
	}
	return digest.NewFromBlob(data), nil
}
