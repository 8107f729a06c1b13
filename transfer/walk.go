package transfer

import (
	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// childDigest finds the entry called name in a Directory: a subdirectory
// or a file.
func childDigest(dir *repb.Directory, name string) (digest.Digest, bool) {
	for _, d := range dir.GetDirectories() {
		if d.GetName() == name {
			return digest.NewFromProtoUnvalidated(d.GetDigest()), true
		}
	}
	for _, f := range dir.GetFiles() {
		if f.GetName() == name {
			return digest.NewFromProtoUnvalidated(f.GetDigest()), true
		}
	}
	return digest.Digest{}, false
}
