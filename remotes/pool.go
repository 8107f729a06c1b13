package remotes

import (
	"math/bits"
	"sync"
)

// downloadPool holds the buffers batch answers are decoded into (held),
// their compressed entries inflated into (inflateRoom) and a stream's
// messages joined in (recvReader), between uses. gRPC's own pool keeps buffers of more than
// 1 MiB in a sync.Pool, which drops them at every garbage collection, and
// memory the runtime gives back to the system costs a page fault per page
// when it is used again: a pull spent a tenth of its CPU time on those.
var downloadPool = &keptPool{limit: downloadPoolBytes}

// downloadPoolBytes bounds what downloadPool keeps: what a run's
// downloads hold in memory at once. That is transfer's inflightBytes
// (32 MiB) of batch answers, eight of the default 4 MiB, and as much
// again for the room their compressed entries inflate into (a batch
// holds both until its blobs are stored).
const downloadPoolBytes = 2 * 32 << 20

// keptPool is a mem.BufferPool that keeps the buffers put back, up to
// limit bytes, in power-of-two size classes. It is safe for concurrent
// use.
type keptPool struct {
	mu    sync.Mutex
	free  map[int][]*[]byte // by capacity
	kept  int
	limit int
}

// minPooled is the smallest buffer worth keeping.
const minPooled = 4 << 10

func sizeClass(n int) int {
	if n <= minPooled {
		return minPooled
	}
	return 1 << bits.Len(uint(n-1))
}

func (p *keptPool) Get(n int) *[]byte {
	c := sizeClass(n)
	p.mu.Lock()
	if l := p.free[c]; len(l) > 0 {
		b := l[len(l)-1]
		p.free[c] = l[:len(l)-1]
		p.kept -= c
		p.mu.Unlock()
		*b = (*b)[:n]
		return b
	}
	p.mu.Unlock()
	b := make([]byte, n, c)
	return &b
}

func (p *keptPool) Put(b *[]byte) {
	c := cap(*b)
	if c != sizeClass(c) {
		return // not one of ours
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.kept+c > p.limit {
		return
	}
	if p.free == nil {
		p.free = map[int][]*[]byte{}
	}
	p.free[c] = append(p.free[c], b)
	p.kept += c
}
