package cache

import "hash/maphash"

// objectTable is what the object index holds of one prefix directory: an
// open-addressed table (linear probing, at most three quarters full,
// between 32 and 64 bytes an object as it grows: a Go map's 29 to 58) of
// 24-byte slots, each an object's key and size.
//
// It is read for every digest a client asks about (FindMissingBlobs), so
// it is laid out for a store far bigger than the processor's caches: a
// lookup reads a slot and the few after it, a cache line or two next to
// each other (on average 2.5 slots for a key it holds, 8.5 for one it
// lacks, at its fullest), and lookupAll reads the home slots of many keys
// before it compares any, so that their cache and TLB misses overlap
// instead of following one another. A Go map read a group's control word,
// then the slot, one key at a time: at 700,000 objects, a memory latency
// or two a digest.
//
// The home slot is a seeded hash of the key (the index's seed), so that
// hashes a client grinds to share a prefix of bits share a home only by
// chance.
type objectTable struct {
	slots []indexSlot
	n     int // slots used
}

type indexSlot struct {
	key objectKey
	// size is the object's size plus one; 0: an empty slot.
	size int64
}

const minTableSlots = 16

// home is the slot probing for k starts at, in a table of mask+1 slots.
func home(seed maphash.Seed, k *objectKey, mask uint32) uint32 {
	return uint32(maphash.Bytes(seed, k[:])) & mask
}

// get is the size of the object whose key is k.
func (t *objectTable) get(seed maphash.Seed, k *objectKey) (int64, bool) {
	if t.n == 0 {
		return 0, false
	}
	mask := uint32(len(t.slots) - 1)
	return t.probe(k, home(seed, k, mask))
}

// probe looks for k from slot p on.
func (t *objectTable) probe(k *objectKey, p uint32) (int64, bool) {
	mask := uint32(len(t.slots) - 1)
	for ; ; p = (p + 1) & mask {
		s := &t.slots[p]
		if s.size == 0 {
			return 0, false
		}
		if s.key == *k {
			return s.size - 1, true
		}
	}
}

// set holds that the object whose key is k has size size.
func (t *objectTable) set(seed maphash.Seed, k *objectKey, size int64) {
	if 4*(t.n+1) > 3*len(t.slots) {
		t.resize(seed, max(minTableSlots, 2*len(t.slots)))
	}
	mask := uint32(len(t.slots) - 1)
	p := home(seed, k, mask)
	for t.slots[p].size != 0 && t.slots[p].key != *k {
		p = (p + 1) & mask
	}
	if t.slots[p].size == 0 {
		t.n++
	}
	t.slots[p] = indexSlot{*k, size + 1}
}

// resize moves the slots to a table of n (a power of two).
func (t *objectTable) resize(seed maphash.Seed, n int) {
	old := t.slots
	t.slots = make([]indexSlot, n)
	mask := uint32(n - 1)
	for _, s := range old {
		if s.size != 0 {
			p := home(seed, &s.key, mask)
			for t.slots[p].size != 0 {
				p = (p + 1) & mask
			}
			t.slots[p] = s
		}
	}
}

// remove takes out the object whose key is k, if the table holds it. The
// slots after it that probing reached past it move back (no tombstones:
// lookups stay as short as the table is full), and a table three
// sixteenths full or less shrinks by half.
func (t *objectTable) remove(seed maphash.Seed, k *objectKey) {
	if t.n == 0 {
		return
	}
	mask := uint32(len(t.slots) - 1)
	p := home(seed, k, mask)
	for t.slots[p].key != *k || t.slots[p].size == 0 {
		if t.slots[p].size == 0 {
			return
		}
		p = (p + 1) & mask
	}
	// Backward shift: each slot after the hole whose home is not between
	// the hole and it (cyclically) fills the hole, and leaves one.
	for q := (p + 1) & mask; t.slots[q].size != 0; q = (q + 1) & mask {
		if (q-home(seed, &t.slots[q].key, mask))&mask >= (q-p)&mask {
			t.slots[p] = t.slots[q]
			p = q
		}
	}
	t.slots[p] = indexSlot{}
	t.n--
	if len(t.slots) > minTableSlots && 16*t.n <= 3*len(t.slots) {
		t.resize(seed, len(t.slots)/2)
	}
}

// lookupChunk is how many keys lookupAll reads together.
const lookupChunk = 64

// lookupAll is get for each of keys, in tables (keys[j] in tables[k[0]]):
// sizes[j] and found[j]. For lookupChunk keys at a time it finds their
// home slots, then reads each and the slot after it in one tight loop
// (in a table three quarters full, many keys sit past their home),
// and only then compares and probes on where it must, so that the keys'
// reads overlap.
func lookupAll(seed maphash.Seed, tables *[256]objectTable, keys []objectKey, sizes []int64, found []bool) {
	var at [lookupChunk]uint32
	var first, next [lookupChunk]indexSlot
	for len(keys) > 0 {
		n := min(len(keys), lookupChunk)
		for j := range n {
			at[j] = home(seed, &keys[j], uint32(len(tables[keys[j][0]].slots)-1))
		}
		for j := range n {
			if t := &tables[keys[j][0]]; t.n > 0 {
				first[j], next[j] = t.slots[at[j]], t.slots[(at[j]+1)&uint32(len(t.slots)-1)]
			} else {
				first[j] = indexSlot{}
			}
		}
		for j := range n {
			switch s := &first[j]; {
			case s.size == 0:
				sizes[j], found[j] = 0, false
			case s.key == keys[j]:
				sizes[j], found[j] = s.size-1, true
			case next[j].size == 0:
				sizes[j], found[j] = 0, false
			case next[j].key == keys[j]:
				sizes[j], found[j] = next[j].size-1, true
			default:
				t := &tables[keys[j][0]]
				sizes[j], found[j] = t.probe(&keys[j], (at[j]+2)&uint32(len(t.slots)-1))
			}
		}
		keys, sizes, found = keys[n:], sizes[n:], found[n:]
	}
}
