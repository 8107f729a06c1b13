package transfer

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/spool"
)

// laterParts is how many parts later keeps its records in, by their
// digests' first bytes: a pass reads the parts its range overlaps.
const laterParts = 16

// later keeps what the first pass over the objects met of the digests
// beyond its range, for the passes after it: each a digest, the number of
// who reached it (an artifact, a ref) and a byte of the caller's, in
// unnamed temporary files. Reading every tree again in each pass, as du
// and gc did, made their time grow with the passes times the refs (a
// million artifacts: fourteen passes, each reading four million
// Directories).
type later struct {
	parts [laterParts]*spool.Strings
	rec   [laterSize]byte
}

// laterSize is a record's size: a digest's hash and size, a number and a
// byte.
const laterSize = sha256.Size + 8 + 4 + 1

func newLater() *later {
	l := &later{}
	for i := range l.parts {
		l.parts[i] = spool.New(16 << 10)
	}
	return l
}

// part is the part a first byte of a hash is in.
func laterPart(b int) int { return b * laterParts / 256 }

// add keeps that who reached k, with what it knew of it.
func (l *later) add(k cache.DigestKey, who int32, what byte) error {
	copy(l.rec[:], k.Hash[:])
	binary.LittleEndian.PutUint64(l.rec[sha256.Size:], uint64(k.Size))
	binary.LittleEndian.PutUint32(l.rec[sha256.Size+8:], uint32(who))
	l.rec[sha256.Size+12] = what
	return l.parts[laterPart(int(k.Hash[0]))].Add(string(l.rec[:]))
}

// each calls fn with each record whose digest's first byte is in [lo,
// hi), and lets go of the parts no later range overlaps.
func (l *later) each(lo, hi int, fn func(k cache.DigestKey, who int32, what byte) error) error {
	var k cache.DigestKey
	for p := laterPart(lo); p <= laterPart(hi-1); p++ {
		if err := l.parts[p].Each(func(_ int, rec string) error {
			if b := int(rec[0]); b < lo || b >= hi {
				return nil
			}
			copy(k.Hash[:], rec)
			k.Size = int64(binary.LittleEndian.Uint64([]byte(rec[sha256.Size:])))
			return fn(k, int32(binary.LittleEndian.Uint32([]byte(rec[sha256.Size+8:]))), rec[sha256.Size+12])
		}); err != nil {
			return err
		}
		if hi >= 256 || laterPart(hi) > p {
			l.parts[p].Close()
			l.parts[p] = spool.New(1)
		}
	}
	return nil
}

// Close lets go of every part.
func (l *later) Close() {
	for _, p := range l.parts {
		p.Close()
	}
}
