package transfer

import (
	"sync"
	"time"

	"github.com/bst-cache/bst-cache/cache"
)

// commitLinger is how long an artifact whose blobs are all local waits
// for others to finish, so that their refs share one sync of the store,
// while refs of the run are still moving bytes.
const commitLinger = 100 * time.Millisecond

// maxCommit is the most artifacts whose refs are written with one sync.
const maxCommit = 64

// commits gathers the ref writes of a run's artifacts that finish close
// together, and writes them with one sync of the store (Store.WriteRefs):
// a sync costs a pull of small artifacts as much as writing their blobs.
// A write waits while other refs of the run move bytes (they hold slots),
// at most commitLinger; it is written at once when no other ref moves
// bytes or maxCommit writes wait. Each ref is still written only after
// its blobs are durable, and a write is through when commit returns. It
// is safe for concurrent use. A copy's and a mirror's writes do not wait
// (newFetcher with no slots): pushes, or a client, wait for them.
type commits struct {
	store *cache.Store
	// moving says how many refs of the run move bytes (hold a slot).
	moving func() int

	mu      sync.Mutex
	pending []*commit
	timer   *time.Timer
}

type commit struct {
	w    cache.RefWrite
	done chan struct{}
	err  error
}

func newCommits(store *cache.Store, jobs slots) *commits {
	return &commits{store: store, moving: func() int { return len(jobs) }}
}

// write writes w's refs, with other artifacts' when some finish within
// commitLinger, and returns once they are written. The caller has given
// back its slot: it moves no more bytes.
func (c *commits) write(w cache.RefWrite) error {
	if len(w.Refs) == 0 {
		return nil
	}
	m := &commit{w: w, done: make(chan struct{})}
	c.mu.Lock()
	c.pending = append(c.pending, m)
	now := len(c.pending) >= maxCommit || c.moving() == 0
	if !now && c.timer == nil {
		c.timer = time.AfterFunc(commitLinger, c.flush)
	}
	c.mu.Unlock()
	if now {
		c.flush()
	}
	<-m.done
	return m.err
}

// flush writes every pending write.
func (c *commits) flush() {
	c.mu.Lock()
	ms := c.pending
	c.pending = nil
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	c.mu.Unlock()
	if len(ms) == 0 {
		return
	}
	ws := make([]cache.RefWrite, len(ms))
	for i, m := range ms {
		ws[i] = m.w
	}
	for i, err := range c.store.WriteRefs(ws) {
		ms[i].err = err
		close(ms[i].done)
	}
}
