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
