package cache

import (
	"fmt"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// CheckDigest rejects a digest that cannot name an object (a bad hash would
// otherwise become a path): it must be 64 lowercase hex digits, its size
// not negative. It is what digest.Digest.Validate checks, without a
// regular expression: servers check every digest of every request.
func CheckDigest(d digest.Digest) error {
	if !validHash(d.Hash) || d.Size < 0 {
		return fmt.Errorf("%w: %v", ErrDigestMismatch, d.Validate())
	}
	return nil
}

// validHash says whether h is a SHA-256 hash in lowercase hex.
func validHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	bad := false
	for i := 0; i < len(h); i++ {
		bad = bad || !lowerHex[h[i]]
	}
	return !bad
}

// lowerHex marks the bytes of a lowercase hex string.
var lowerHex = func() (t [256]bool) {
	for _, c := range "0123456789abcdef" {
		t[c] = true
	}
	return t
}()
