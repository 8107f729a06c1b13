package server

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// The account's object table finds what was put and not removed, and
// nothing else, through growth, shrinking and the backward shifts of
// removal, including hashes that share their first 16 bytes (the bytes
// its seeded hash reads: same home, same 32 bits) and differ after.
func TestObjectSlots(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	q := newAccount()
	want := map[[32]byte]uint32{}
	var keys [][32]byte
	newKey := func() [32]byte {
		var seed [8]byte
		binary.LittleEndian.PutUint64(seed[:], rng.Uint64())
		k := sha256.Sum256(seed[:])
		if len(keys) > 0 && rng.IntN(8) == 0 {
			copy(k[:16], keys[rng.IntN(len(keys))][:16]) // a twin
		}
		return k
	}
	check := func(step int) {
		t.Helper()
		for k, i := range want {
			if got, ok := q.slots.find(q.objs, &k); !ok || got != i {
				t.Fatalf("step %d: %x found at %d, %v; want %d", step, k[:4], got, ok, i)
			}
		}
		var absent [][32]byte
		for range 200 {
			k := newKey()
			if _, in := want[k]; in {
				continue
			}
			if i, ok := q.slots.find(q.objs, &k); ok {
				t.Fatalf("step %d: %x never put, found at %d", step, k[:4], i)
			}
			absent = append(absent, k)
		}
		// findAll says what find says, present and absent mixed.
		var all [][32]byte
		for k := range want {
			all = append(all, k)
		}
		all = append(all, absent...)
		rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		places := make([]uint32, len(all))
		q.slots.findAll(q.objs, all, places)
		for j, k := range all {
			if i, in := want[k]; in && places[j] != i+1 || !in && places[j] != 0 {
				t.Fatalf("step %d: findAll says %x is at %d (place + 1); want %d, %v", step, k[:4], places[j], i+1, in)
			}
		}
		if q.slots.n != len(want) || 2*q.slots.n > len(q.slots.slots) {
			t.Fatalf("step %d: %d slots used of %d, %d objects", step, q.slots.n, len(q.slots.slots), len(want))
		}
	}
	// Grow to 20,000 objects, shrink to 100, grow again; remove at random.
	for step, target := range []int{20_000, 100, 5_000, 0} {
		for len(want) != target {
			if len(want) < target && rng.IntN(4) != 0 || len(want) == 0 {
				k := newKey()
				if _, in := want[k]; in {
					continue
				}
				i := uint32(len(q.objs))
				q.objs = append(q.objs, object{hash: k})
				q.slots.put(&k, i)
				want[k] = i
				keys = append(keys, k)
			} else {
				k := keys[rng.IntN(len(keys))]
				i, in := want[k]
				if !in {
					continue
				}
				q.slots.remove(&k, i)
				q.slots.remove(&k, i) // again: nothing to do
				delete(want, k)
			}
			if len(want)%997 == 0 {
				check(step)
			}
		}
		check(step)
	}
	if len(q.slots.slots) != minSlots {
		t.Errorf("empty again: %d slots; want %d", len(q.slots.slots), minSlots)
	}
}
