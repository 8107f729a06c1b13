package spool

import "crypto/sha256"

// Seen is a set of strings held by a 128-bit hash of each (SHA-256, cut),
// 16 bytes a string however long: a million names are told apart with a
// chance of a collision of about one in 10^26. It is not safe for
// concurrent use.
type Seen map[[16]byte]struct{}

func seenKey(s string) [16]byte {
	sum := sha256.Sum256([]byte(s))
	return [16]byte(sum[:16])
}

// Add adds s and says whether it was new.
func (m Seen) Add(s string) bool {
	k := seenKey(s)
	if _, ok := m[k]; ok {
		return false
	}
	m[k] = struct{}{}
	return true
}

// Has says whether s was added.
func (m Seen) Has(s string) bool {
	_, ok := m[seenKey(s)]
	return ok
}
