package server

import (
	"encoding/binary"
	"hash/maphash"
)

// objectSlots finds the account's objects by hash: an open-addressed
// table (linear probing) of 8-byte slots, at most half full, each the
// object's place in the account's slice and 32 bits of a seeded hash of
// its key.
//
// It is the account's lookup for every digest a client asks about
// (FindMissingBlobs, reads, uploads), so it is laid out for a store far
// bigger than the processor's caches: a lookup reads one slot (one cache
// line, a neighbour or two when probing goes on) and, only when those 32
// bits match, the object's record, which holds its hash; a digest the
// account lacks costs the slot alone. A Go map keyed by the hash read a
// group's control word, then a 36-byte slot elsewhere in the group, then
// the record. It costs 16 to 32 bytes an object as it grows (a map's 41
// to 82), up to 64 as it shrinks.
//
// The hash is seeded per account, so a client cannot choose hashes that
// crowd one part of the table: uploads it could grind to share a slot
// would share one only by chance. The 32 bits kept are the hash's high
// half, from which a slot's home is taken (the table has at most 2^32
// slots, as the slice at most 2^32 objects), so growing needs no record.
type objectSlots struct {
	seed  maphash.Seed
	slots []uint64 // 0: empty; else the hash's 32 bits << 32 | place + 1
	n     int      // slots used
}

const minSlots = 64

func newObjectSlots() objectSlots {
	return objectSlots{seed: maphash.MakeSeed(), slots: make([]uint64, minSlots)}
}

// tag is the 32 bits of k's seeded hash a slot keeps.
func (t *objectSlots) tag(k *[32]byte) uint32 {
	return uint32(maphash.Bytes(t.seed, k[:16]) >> 32)
}

// find is the place of the object whose hash is k, among objs.
func (t *objectSlots) find(objs []object, k *[32]byte) (uint32, bool) {
	tag := t.tag(k)
	return t.probe(objs, k, tag, tag&uint32(len(t.slots)-1))
}

// probe looks for the object whose hash is k (its tag tag) from slot p on.
func (t *objectSlots) probe(objs []object, k *[32]byte, tag, p uint32) (uint32, bool) {
	mask := uint32(len(t.slots) - 1)
	for ; ; p = (p + 1) & mask {
		s := t.slots[p]
		if s == 0 {
			return 0, false
		}
		if uint32(s>>32) == tag && objs[uint32(s)-1].hash == *k {
			return uint32(s) - 1, true
		}
	}
}

// findAll is find for each of keys: places[j] is the place of the object
// whose hash is keys[j] plus one, 0 if objs has none. For findChunk keys
// at a time it reads their home slots and the slots after them in one
// tight loop, then the first and last words of the hash of the record the
// one with the key's tag names in another (a hash may span two cache
// lines), and only then compares, probing on where it must. In a big
// account each of those reads is likely a cache miss (and a TLB miss); so
// the keys' misses overlap instead of following one another, which cost a
// FindMissingBlobs of many digests a memory latency or two a digest.
func (t *objectSlots) findAll(objs []object, keys [][32]byte, places []uint32) {
	mask := uint32(len(t.slots) - 1)
	var tags [findChunk]uint32
	var home, next, cand, first, last [findChunk]uint64
	for len(keys) > 0 {
		n := min(len(keys), findChunk)
		for j := range n {
			tags[j] = t.tag(&keys[j])
		}
		for j := range n {
			home[j], next[j] = t.slots[tags[j]&mask], t.slots[(tags[j]+1)&mask]
		}
		for j := range n {
			cand[j] = 0
			for _, s := range [2]uint64{home[j], next[j]} {
				if s != 0 && uint32(s>>32) == tags[j] {
					h := &objs[uint32(s)-1].hash
					cand[j], first[j], last[j] = s, binary.LittleEndian.Uint64(h[:8]), binary.LittleEndian.Uint64(h[24:])
					break
				}
			}
		}
		for j := range n {
			places[j] = 0
			s := cand[j]
			switch {
			case home[j] == 0:
			case s != 0 && first[j] == binary.LittleEndian.Uint64(keys[j][:8]) &&
				last[j] == binary.LittleEndian.Uint64(keys[j][24:]) && objs[uint32(s)-1].hash == keys[j]:
				places[j] = uint32(s)
			default:
				if i, ok := t.probe(objs, &keys[j], tags[j], tags[j]&mask); ok {
					places[j] = i + 1
				}
			}
		}
		keys, places = keys[n:], places[n:]
	}
}

// findChunk is how many keys findAll looks up together.
const findChunk = 64

// put adds the object at place i, whose hash is k: not in the table yet.
func (t *objectSlots) put(k *[32]byte, i uint32) {
	if 2*(t.n+1) > len(t.slots) {
		t.resize(2 * len(t.slots))
	}
	t.n++
	t.insert(uint64(t.tag(k))<<32 | uint64(i) + 1)
}

func (t *objectSlots) insert(s uint64) {
	mask := uint32(len(t.slots) - 1)
	p := uint32(s>>32) & mask
	for t.slots[p] != 0 {
		p = (p + 1) & mask
	}
	t.slots[p] = s
}

// resize moves the slots to a table of n (a power of two).
func (t *objectSlots) resize(n int) {
	old := t.slots
	t.slots = make([]uint64, n)
	for _, s := range old {
		if s != 0 {
			t.insert(s)
		}
	}
}

// remove takes out the object at place i, whose hash is k, if the table
// holds it.
// The slots after it that probing reached past it move back (no
// tombstones: lookups stay as short as the table is full), and a table an
// eighth full or less shrinks by half.
func (t *objectSlots) remove(k *[32]byte, i uint32) {
	mask := uint32(len(t.slots) - 1)
	want := uint64(t.tag(k))<<32 | uint64(i) + 1
	p := uint32(want>>32) & mask
	for t.slots[p] != want {
		if t.slots[p] == 0 {
			return
		}
		p = (p + 1) & mask
	}
	// Backward shift: each slot after the hole whose home is not between
	// the hole and it (cyclically) fills the hole, and leaves one.
	for q := (p + 1) & mask; t.slots[q] != 0; q = (q + 1) & mask {
		home := uint32(t.slots[q]>>32) & mask
		if (q-home)&mask >= (q-p)&mask {
			t.slots[p] = t.slots[q]
			p = q
		}
	}
	t.slots[p] = 0
	t.n--
	if len(t.slots) > minSlots && 8*t.n <= len(t.slots) {
		t.resize(len(t.slots) / 2)
	}
}
