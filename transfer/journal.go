package transfer

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bst-cache/bst-cache/cache"
)

// work is one index entry to bring to a replica: the local ref of kind.
type work struct {
	kind cache.Kind
	ref  string
}

func (w work) String() string { return string(w.kind) + " " + w.ref }

// journal is one replica's durable queue of work: a small file per entry
// in dir, named by its sequence number, written (a temporary file,
// fsynced, renamed, the directory fsynced) before add returns, replayed by
// openJournal and removed once the work is done. An entry queued again
// while it waits is one entry (a ref queued twice moves once); queued
// again while it moves, it moves again after. Past bound entries the
// oldest waiting one is dropped (add returns it). It is safe for
// concurrent use; one process owns dir.
type journal struct {
	dir   string
	bound int

	mu    sync.Mutex
	next  uint64
	items map[work]*journalItem
	// fifo holds the waiting entries in the order to move them; an entry
	// whose item is gone or moved on (another seq, or taken) is stale.
	fifo []queued
}

type journalItem struct {
	seq   uint64
	added time.Time
	taken bool // being moved
	again bool // queued again while being moved
	// readded is when it was queued again.
	readded time.Time
}

type queued struct {
	w   work
	seq uint64
}

// journalTmp prefixes a journal file being written.
const journalTmp = ".tmp-"

// openJournal opens (creating) dir and replays what it holds: the
// entries left by a run that stopped or was killed, oldest first. A file
// cut short by a kill never got its final name; such leftovers are
// removed.
func openJournal(dir string, bound int) (*journal, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("journal %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w", dir, err)
	}
	j := &journal{dir: dir, bound: bound, next: 1, items: map[work]*journalItem{}}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), journalTmp) {
			os.Remove(p)
			continue
		}
		seq, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil {
			continue // not the journal's
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("journal %s: %w", dir, err)
		}
		kind, ref, ok := strings.Cut(strings.TrimSuffix(string(data), "\n"), "\n")
		if !ok || cache.ValidateRef(ref) != nil {
			return nil, fmt.Errorf("journal %s: entry %s is not \"KIND\\nREF\"", dir, e.Name())
		}
		w := work{cache.Kind(kind), ref}
		info, _ := e.Info()
		added := time.Now()
		if info != nil {
			added = info.ModTime()
		}
		if old, ok := j.items[w]; ok {
			// Queued again before a kill removed the older file.
			keep, drop := max(old.seq, seq), min(old.seq, seq)
			os.Remove(filepath.Join(dir, j.name(drop)))
			old.seq = keep
		} else {
			j.items[w] = &journalItem{seq: seq, added: added}
		}
		j.next = max(j.next, seq+1)
	}
	for w, it := range j.items {
		j.fifo = append(j.fifo, queued{w, it.seq})
	}
	slices.SortFunc(j.fifo, func(a, b queued) int { return cmp.Compare(a.seq, b.seq) })
	return j, nil
}

func (j *journal) name(seq uint64) string { return fmt.Sprintf("%020d", seq) }

// add queues ws durably; it returns once they are on disk, with the
// entries dropped to keep to the bound.
func (j *journal) add(ws []work) (dropped []work, err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	wrote := false
	for _, w := range ws {
		if it, ok := j.items[w]; ok {
			if it.taken && !it.again {
				it.again, it.readded = true, time.Now() // its file stays until it moved again
			}
			continue
		}
		seq := j.next
		j.next++
		if err := j.write(seq, w); err != nil {
			return dropped, err
		}
		wrote = true
		j.items[w] = &journalItem{seq: seq, added: time.Now()}
		j.fifo = append(j.fifo, queued{w, seq})
		for len(j.items) > j.bound {
			old, ok := j.pop()
			if !ok {
				break // all being moved
			}
			j.remove(old)
			dropped = append(dropped, old)
		}
	}
	if wrote {
		if err := syncDir(j.dir); err != nil {
			return dropped, fmt.Errorf("journal %s: %w", j.dir, err)
		}
	}
	return dropped, nil
}

// write writes w's file atomically and fsyncs it; the caller fsyncs the
// directory.
func (j *journal) write(seq uint64, w work) error {
	f, err := os.CreateTemp(j.dir, journalTmp+"*")
	if err != nil {
		return fmt.Errorf("journal %s: %w", j.dir, err)
	}
	_, err = fmt.Fprintf(f, "%s\n%s\n", w.kind, w.ref)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(j.dir, j.name(seq)))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("journal %s: writing %s: %w", j.dir, w, err)
	}
	return nil
}

// pop takes the oldest waiting entry off the queue; j.mu held.
func (j *journal) pop() (work, bool) {
	for len(j.fifo) > 0 {
		q := j.fifo[0]
		j.fifo = j.fifo[1:]
		if it, ok := j.items[q.w]; ok && it.seq == q.seq && !it.taken {
			return q.w, true
		}
	}
	return work{}, false
}

// remove forgets w and deletes its file; j.mu held. A file that cannot be
// removed is replayed by the next run, which moves nothing for it.
func (j *journal) remove(w work) {
	if it, ok := j.items[w]; ok {
		os.Remove(filepath.Join(j.dir, j.name(it.seq)))
		delete(j.items, w)
	}
}

// take hands out up to n waiting entries, oldest first; each must be
// given back with finish or retry.
func (j *journal) take(n int) []work {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []work
	for len(out) < n {
		w, ok := j.pop()
		if !ok {
			break
		}
		j.items[w].taken = true
		out = append(out, w)
	}
	return out
}

// finish ends taken work that is done (or can never be): its file goes,
// unless it was queued again meanwhile, when it waits again. It returns
// when the work done was queued.
func (j *journal) finish(w work) (added time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	it, ok := j.items[w]
	if !ok {
		return time.Now()
	}
	added = it.added
	if it.again {
		it.taken, it.again, it.added = false, false, it.readded
		j.fifo = append(j.fifo, queued{w, it.seq})
		return added
	}
	j.remove(w)
	return added
}

// retry gives taken work back to the queue, at its end.
func (j *journal) retry(w work) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if it, ok := j.items[w]; ok {
		it.taken, it.again = false, false
		j.fifo = append(j.fifo, queued{w, it.seq})
	}
}

// depth is the entries queued (waiting or moving) and when the oldest of
// them was queued (zero when none is).
func (j *journal) depth() (n int, oldest time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, it := range j.items {
		if oldest.IsZero() || it.added.Before(oldest) {
			oldest = it.added
		}
	}
	return len(j.items), oldest
}

// syncDir makes the names in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
