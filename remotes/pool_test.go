package remotes

import "testing"

// The download pool gives back what was put, whatever the garbage
// collector did in between, and keeps no more than its limit.
func TestKeptPool(t *testing.T) {
	p := &keptPool{limit: 5 << 19}
	a := p.Get(1<<20 + 5)
	if len(*a) != 1<<20+5 || cap(*a) != 2<<20 {
		t.Fatalf("Get: len %d cap %d", len(*a), cap(*a))
	}
	b := p.Get(1 << 20)
	p.Put(a)
	p.Put(b) // over the limit: dropped
	if p.kept != 2<<20 {
		t.Errorf("kept %d bytes, want %d", p.kept, 2<<20)
	}
	if c := p.Get(1<<20 + 100); &(*c)[:1][0] != &(*a)[:1][0] || len(*c) != 1<<20+100 {
		t.Error("a buffer put back was not used again")
	}
	odd := make([]byte, 10, 5000)
	p.Put(&odd)
	if p.kept != 0 || len(p.free[8<<10]) != 0 {
		t.Errorf("kept %d bytes of a buffer not of a size class", p.kept)
	}
}

// A pull's batches at once (eight of 4 MiB in transfer's 32 MiB in
// flight), each holding its answer and the room its compressed entries
// inflate into, take their buffers from the pool again, no new memory,
// once the first round put them back. With room for the answers alone,
// half of them were made anew every time.
func TestDownloadPoolKeepsConcurrentBatches(t *testing.T) {
	p := &keptPool{limit: downloadPoolBytes}
	answer, blobs := int(DefaultMaxBatchBytes), int(DefaultMaxBatchBytes-batchMargin)
	round := func() {
		held := make([]*[]byte, 0, 16)
		for range 8 {
			held = append(held, p.Get(answer), p.Get(blobs))
		}
		for _, b := range held {
			p.Put(b)
		}
	}
	round()
	if n := testing.AllocsPerRun(5, round); n > 1 {
		t.Errorf("eight compressed batches at once: %.0f allocations a round once the pool is warm, want none", n)
	}
}
