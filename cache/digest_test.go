package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// HashBytes decodes what encoding/hex decodes, and takes only 64
// lowercase hex digits, as CheckDigest does.
func TestHashBytes(t *testing.T) {
	for i := range 1000 {
		h := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
		got, ok := HashBytes(hex.EncodeToString(h[:]))
		if !ok || got != h {
			t.Fatalf("%x: got %x, %v", h, got, ok)
		}
	}
	good := strings.Repeat("0123456789abcdef", 4)
	for _, bad := range []string{"", good[:62], good + "00", strings.ToUpper(good), good[:63] + "g", good[:10] + "/" + good[11:], good[:63] + "\x00", good[:63] + "\xff"} {
		if _, ok := HashBytes(bad); ok {
			t.Errorf("%q taken as a hash", bad)
		}
		if CheckDigest(digest.Digest{Hash: bad}) == nil {
			t.Errorf("%q: CheckDigest takes it", bad)
		}
	}
}
