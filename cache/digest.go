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

// HashBytes is h, a SHA-256 hash in lowercase hex, in binary; ok is false
// when h is not one. Servers decode every digest a lookup asks about, so
// it is a loop with no branch a byte (encoding/hex took half of the time
// serve's quota account spent on a lookup).
func HashBytes(h string) (k [32]byte, ok bool) {
	if len(h) != 2*len(k) {
		return k, false
	}
	return k, decodeHex(k[:], h)
}

// decodeHex decodes src, 2*len(dst) lowercase hex digits, into dst and
// says whether they all were.
func decodeHex(dst []byte, src string) bool {
	var bad byte
	for i := range dst {
		hi, lo := nibble[src[2*i]], nibble[src[2*i+1]]
		bad |= hi | lo
		dst[i] = hi<<4 | lo
	}
	return bad&notHex == 0
}

// nibble is each lowercase hex digit's value, and notHex for every other
// byte.
var nibble = func() (t [256]byte) {
	for i := range t {
		t[i] = notHex
	}
	for i, c := range "0123456789abcdef" {
		t[c] = byte(i)
	}
	return t
}()

const notHex = 0x10

// lowerHex marks the bytes of a lowercase hex string.
var lowerHex = func() (t [256]bool) {
	for _, c := range "0123456789abcdef" {
		t[c] = true
	}
	return t
}()
