package commands

import (
	"fmt"

	"github.com/bst-cache/bst-cache/internal/spool"
)

// refList is the refs a command was named plainly (arguments, stdin,
// --refs-from, glob matches), each once, in the order named. Their text is
// spooled (internal/spool: in memory up to a MiB, then in an unnamed
// temporary file) and read back a batch at a time. So a list of a million
// refs (pull - of a whole cache's refs) costs a hash of each in memory
// (spool.Seen, for the duplicates), not the refs, their copies and their
// results.
type refList struct {
	seen spool.Seen
	text *spool.Strings
	// extra are the refs admitted beside the list (--deps, element names).
	extra int
}

func newRefList() *refList { return &refList{seen: spool.Seen{}, text: spool.New(0)} }

// add appends ref unless the list has it.
func (l *refList) add(ref string) error {
	if !l.seen.Add(ref) {
		return nil
	}
	if err := l.text.Add(ref); err != nil {
		return fmt.Errorf("spooling the refs: %w", err)
	}
	return nil
}

func (l *refList) len() int { return l.text.Len() }

// admit says whether a ref a run adds beside the list (a dependency, an
// element's) is new: neither listed nor admitted before.
func (l *refList) admit(ref string) bool {
	if !l.seen.Add(ref) {
		return false
	}
	l.extra++
	return true
}

// each hands fn the refs in order, up to n at a time.
func (l *refList) each(n int, fn func([]string) error) error {
	batch := make([]string, 0, min(n, l.len()))
	if err := l.text.Each(func(_ int, ref string) error {
		if batch = append(batch, ref); len(batch) < n {
			return nil
		}
		err := fn(batch)
		batch = batch[:0]
		return err
	}); err != nil {
		return err
	}
	if len(batch) > 0 {
		return fn(batch)
	}
	return nil
}

// all is every ref of the list, for the commands that need them at once.
func (l *refList) all() ([]string, error) {
	out := make([]string, 0, l.len())
	err := l.each(refBatch, func(b []string) error {
		out = append(out, b...)
		return nil
	})
	return out, err
}

// refBatch is how many refs a transfer takes at a time: its results are
// printed, counted and forgotten before the next batch is read.
const refBatch = 8192
