package commands

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
)

// refList is the refs a command was named plainly (arguments, stdin,
// --refs-from, glob matches), each once, in the order named. Their text is
// spooled: in memory up to refSpoolMemory bytes, then in an unnamed
// temporary file, read back a batch at a time. So a list of a million refs
// (pull - of a whole cache's refs) costs a hash of each in memory (refSet,
// for the duplicates), not the refs, their copies and their results.
type refList struct {
	seen refSet
	// n are the refs listed; extra those admitted beside them (--deps,
	// element names).
	n, extra int
	mem      []byte
	file     *os.File // once mem passed refSpoolMemory
	w        *bufio.Writer
}

// refSpoolMemory is how much ref text a list keeps in memory before it
// spools to a temporary file.
const refSpoolMemory = 1 << 20

func newRefList() *refList { return &refList{seen: refSet{}} }

// add appends ref unless the list has it.
func (l *refList) add(ref string) error {
	if !l.seen.add(ref) {
		return nil
	}
	l.n++
	if l.w != nil {
		_, err := l.w.WriteString(ref + "\n")
		return err
	}
	l.mem = append(append(l.mem, ref...), '\n')
	if len(l.mem) <= refSpoolMemory {
		return nil
	}
	// The file has no name: nothing is left behind, however the run ends,
	// and it is closed with the list (an os.File closes once unreachable).
	f, err := os.CreateTemp("", "bst-cache-refs-*")
	if err != nil {
		return fmt.Errorf("spooling the refs: %w", err)
	}
	os.Remove(f.Name())
	l.file, l.w = f, bufio.NewWriter(f)
	_, err = l.w.Write(l.mem)
	l.mem = nil
	return err
}

func (l *refList) len() int { return l.n }

// admit says whether a ref a run adds beside the list (a dependency, an
// element's) is new: neither listed nor admitted before.
func (l *refList) admit(ref string) bool {
	if !l.seen.add(ref) {
		return false
	}
	l.extra++
	return true
}

// each hands fn the refs in order, up to n at a time.
func (l *refList) each(n int, fn func([]string) error) error {
	var r io.Reader = bytes.NewReader(l.mem)
	if l.file != nil {
		if err := l.w.Flush(); err != nil {
			return fmt.Errorf("spooling the refs: %w", err)
		}
		if _, err := l.file.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("reading the spooled refs: %w", err)
		}
		r = l.file
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	batch := make([]string, 0, min(n, l.n))
	for sc.Scan() {
		if batch = append(batch, sc.Text()); len(batch) == n {
			if err := fn(batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the spooled refs: %w", err)
	}
	if len(batch) > 0 {
		return fn(batch)
	}
	return nil
}

// all is every ref of the list, for the commands that need them at once.
func (l *refList) all() ([]string, error) {
	out := make([]string, 0, l.n)
	err := l.each(refBatch, func(b []string) error {
		out = append(out, b...)
		return nil
	})
	return out, err
}

// refSet holds refs by a 128-bit hash of their name (SHA-256, cut), 16
// bytes each: a million names are told apart with a chance of a collision
// of about one in 10^26.
type refSet map[[16]byte]struct{}

// add says whether ref was new.
func (s refSet) add(ref string) bool {
	sum := sha256.Sum256([]byte(ref))
	k := [16]byte(sum[:16])
	if _, ok := s[k]; ok {
		return false
	}
	s[k] = struct{}{}
	return true
}

// refBatch is how many refs a transfer takes at a time: its results are
// printed, counted and forgotten before the next batch is read.
const refBatch = 8192
