package cache

import (
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/internal/cpucache"
)

// The index's tables find what was set and not removed, with its last
// size (0 included), and nothing else, through growth, shrinking and the
// backward shifts of removal; lookupAll says what get says, keys of many
// tables and absent ones mixed.
func TestObjectTables(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	seed := maphash.MakeSeed()
	var tables [256]objectTable
	want := map[objectKey]int64{}
	var keys []objectKey
	newKey := func() objectKey {
		var k objectKey
		for i := range k {
			k[i] = byte(rng.Uint32())
		}
		k[0] = byte(rng.IntN(4)) // four tables, so that each grows and shrinks
		return k
	}
	check := func(step int) {
		t.Helper()
		asked := make([]objectKey, 0, len(want)+200)
		for k, size := range want {
			if got, ok := tables[k[0]].get(seed, &k); !ok || got != size {
				t.Fatalf("step %d: %x holds %d, %v; want %d", step, k[:4], got, ok, size)
			}
			asked = append(asked, k)
		}
		for range 200 {
			k := newKey()
			if _, in := want[k]; in {
				continue
			}
			if got, ok := tables[k[0]].get(seed, &k); ok {
				t.Fatalf("step %d: %x never set, holds %d", step, k[:4], got)
			}
			asked = append(asked, k)
		}
		rng.Shuffle(len(asked), func(i, j int) { asked[i], asked[j] = asked[j], asked[i] })
		sizes, found := make([]int64, len(asked)), make([]bool, len(asked))
		lookupAll(seed, &tables, asked, sizes, found)
		for j, k := range asked {
			if size, in := want[k]; found[j] != in || sizes[j] != size {
				t.Fatalf("step %d: lookupAll says %x holds %d, %v; want %d, %v", step, k[:4], sizes[j], found[j], size, in)
			}
		}
		n := 0
		for i := range tables {
			if tb := &tables[i]; 4*tb.n > 3*len(tb.slots) {
				t.Fatalf("step %d: table %d has %d slots used of %d", step, i, tb.n, len(tb.slots))
			}
			n += tables[i].n
		}
		if n != len(want) {
			t.Fatalf("step %d: %d slots used, %d objects", step, n, len(want))
		}
	}
	for step, target := range []int{20_000, 100, 5_000, 0} {
		for len(want) != target {
			switch {
			case len(want) < target && rng.IntN(4) != 0 || len(want) == 0:
				k := newKey()
				size := int64(rng.IntN(3)) // 0 too: a slot's size is kept plus one
				tables[k[0]].set(seed, &k, size)
				if _, in := want[k]; !in {
					keys = append(keys, k)
				}
				want[k] = size
			case rng.IntN(8) == 0: // set again with another size
				k := keys[rng.IntN(len(keys))]
				if _, in := want[k]; in {
					tables[k[0]].set(seed, &k, 7)
					want[k] = 7
				}
			default:
				k := keys[rng.IntN(len(keys))]
				tables[k[0]].remove(seed, &k)
				tables[k[0]].remove(seed, &k) // again: nothing to do
				delete(want, k)
			}
			if len(want)%997 == 0 {
				check(step)
			}
		}
		check(step)
	}
	for i := range tables {
		if len(tables[i].slots) > minTableSlots {
			t.Errorf("empty again: table %d has %d slots; want at most %d", i, len(tables[i].slots), minTableSlots)
		}
	}
}

// What the object index's lookups cost a digest with 700 objects and with
// 700,000 (the big store of scripts/bench-scale), 100 digests a call
// taken in turn from 2,000 (as scripts/lookups asks FindMissingBlobs),
// the processor's caches cold before each call as a server's calls find
// them: the tables with lookupAll, and Go maps one digest at a time (the
// index before the tables) as the base, in the same run:
// go test -bench IndexLookup -run ^$ ./cache/.
func BenchmarkIndexLookup(b *testing.B) {
	for _, n := range []int{700, 700_000} {
		rng := rand.New(rand.NewPCG(5, 6))
		seed := maphash.MakeSeed()
		var tables [256]objectTable
		var maps [256]map[objectKey]int64
		for i := range maps {
			maps[i] = map[objectKey]int64{}
		}
		keys := make([]objectKey, n)
		for i := range keys {
			for j := range keys[i] {
				keys[i][j] = byte(rng.Uint32())
			}
			tables[keys[i][0]].set(seed, &keys[i], 1000)
			maps[keys[i][0]][keys[i]] = 1000
		}
		asked := make([]objectKey, 2000)
		for i := range asked {
			asked[i] = keys[i*7919%n]
		}
		sizes, found := make([]int64, 100), make([]bool, 100)
		for _, c := range []struct {
			name   string
			lookup func([]objectKey)
		}{
			{"tables", func(ks []objectKey) { lookupAll(seed, &tables, ks, sizes, found) }},
			{"maps", func(ks []objectKey) {
				for j, k := range ks {
					sizes[j], found[j] = maps[k[0]][k]
				}
			}},
		} {
			b.Run(fmt.Sprintf("%d/%s", n, c.name), func(b *testing.B) {
				took := make([]time.Duration, b.N)
				var kept byte
				for i := range b.N {
					kept ^= cpucache.Evict()
					at := i * 100 % len(asked)
					start := time.Now()
					c.lookup(asked[at : at+100])
					took[i] = time.Since(start)
				}
				if kept == 1 && !found[0] {
					b.Log("kept") // so that nothing above is optimized away
				}
				// The median call: on a busy machine a mean counts
				// the calls other processes' turns fell in.
				slices.Sort(took)
				b.ReportMetric(float64(took[b.N/2].Nanoseconds())/100, "ns/digest")
			})
		}
	}
}
