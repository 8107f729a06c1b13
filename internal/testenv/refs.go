package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/cache"
)

// WriteRefs writes n artifacts' BuildStream 1 refs, strong and weak (as
// bst and scripts/genrefs keep them: bench/eNNNNN/KEY), each naming the
// empty Directory, straight into a store's ref directory: a listing reads
// refs, not what they name, and thousands are written in a moment. It
// returns the refs, sorted.
func WriteRefs(t testing.TB, store *cache.Store, n int) []string {
	t.Helper()
	content, err := proto.Marshal(digest.Empty.ToProto())
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for i := range n {
		for _, key := range []string{fmt.Sprintf("%064x", i*2+1), fmt.Sprintf("%064x", i*2)} {
			ref := fmt.Sprintf("bench/e%05d/%s", i, key)
			p, err := store.RefPath(cache.KindBst1Artifact, ref)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, content, 0o644); err != nil {
				t.Fatal(err)
			}
			refs = append(refs, ref)
		}
	}
	sort.Strings(refs)
	return refs
}
