package cache

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// DigestKey is a digest as a map key of 40 bytes without pointers: a
// map of a big store's million objects keyed by it holds no strings for
// the garbage collector to scan, and a third of the memory.
type DigestKey struct {
	Hash [sha256.Size]byte
	Size int64
}

// KeyOf is d's key. A digest whose hash is not SHA-256 hex (none in a
// store) keys as the hash of its text with a negative size, apart from
// every valid one.
func KeyOf(d digest.Digest) DigestKey {
	var k DigestKey
	if len(d.Hash) == 2*sha256.Size {
		if _, err := hex.Decode(k.Hash[:], []byte(d.Hash)); err == nil {
			k.Size = d.Size
			return k
		}
	}
	return DigestKey{Hash: sha256.Sum256([]byte(d.Hash)), Size: -1 - d.Size}
}
