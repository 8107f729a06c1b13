// Package cpucache leaves the processor's caches cold, for benchmarks of
// lookups in big tables: a server's call finds its tables so, the gRPC,
// system calls and other processes that ran since its last having filled
// the caches and the TLB.
package cpucache

// buffer is what Evict reads: larger than any processor cache here, and
// than what its TLB maps.
var buffer = make([]byte, 64<<20)

// Evict reads and writes 64 MiB, a cache line at a time, so that the
// processor's caches and TLB hold little of what was read before. It
// returns what it read, folded, for the caller to keep, so that the reads
// are not optimized away.
func Evict() byte {
	var x byte
	for i := 0; i < len(buffer); i += 64 {
		x ^= buffer[i]
		buffer[i] = x + 1
	}
	return x
}
