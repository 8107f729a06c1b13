// Package spool keeps a long list of strings (ref names) out of the heap:
// written once, in order, and read back in that order as many times as
// needed. The first bytes stay in memory; past a bound they go to a
// temporary file that is unnamed as soon as it is made, so nothing is left
// on disk however the process ends, and nothing is written where the
// user's data lives (only under the OS temp directory).
//
// Each string is stored as its length (a uvarint) and its bytes, so any
// string (newlines included) comes back as it went in. Strings are read in
// order (Each) or one by its place (At). A Strings is for one goroutine at
// a time. Seen, beside it, tells which strings came before at 16 bytes a
// string.
package spool

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
)

// Memory is how many bytes a Strings keeps in memory before it spools to
// a file, unless New is given another bound.
const Memory = 1 << 20

// Strings is a list of strings spooled in memory, then to an unnamed file.
type Strings struct {
	limit int
	n     int
	mem   []byte
	f     *os.File
	w     *bufio.Writer
	// read: the file was read since the last write, so its offset is not
	// at its end.
	read bool
	// size is how many bytes were added; marks are where every stride-th
	// string begins, for At.
	size  int64
	marks []int64
	// at reads for At, kept between calls.
	at *bufio.Reader
}

// stride is how many strings At may read past to reach one: a place kept
// every 16 strings costs half a byte a string.
const stride = 16

// New is an empty list that keeps up to memory bytes in memory (Memory
// when memory is 0 or less).
func New(memory int) *Strings {
	if memory <= 0 {
		memory = Memory
	}
	return &Strings{limit: memory}
}

// Add appends s.
func (l *Strings) Add(s string) error {
	var size [binary.MaxVarintLen64]byte
	head := size[:binary.PutUvarint(size[:], uint64(len(s)))]
	if l.n%stride == 0 {
		l.marks = append(l.marks, l.size)
	}
	l.size += int64(len(head) + len(s))
	if l.f == nil {
		l.mem = append(append(l.mem, head...), s...)
		l.n++
		if len(l.mem) <= l.limit {
			return nil
		}
		return l.spill()
	}
	if l.read {
		if _, err := l.f.Seek(0, io.SeekEnd); err != nil {
			return fmt.Errorf("spooling: %w", err)
		}
		l.read = false
	}
	l.w.Write(head)
	if _, err := l.w.WriteString(s); err != nil {
		return fmt.Errorf("spooling: %w", err)
	}
	l.n++
	return nil
}

// spill moves what is in memory to a new unnamed temporary file.
func (l *Strings) spill() error {
	f, err := os.CreateTemp("", "bst-cache-spool-*")
	if err != nil {
		return fmt.Errorf("spooling: %w", err)
	}
	// Unnamed at once: its space goes back when it is closed or the
	// process ends, however it ends.
	os.Remove(f.Name())
	l.f, l.w = f, bufio.NewWriter(f)
	if _, err := l.w.Write(l.mem); err != nil {
		return fmt.Errorf("spooling: %w", err)
	}
	l.mem = nil
	return nil
}

// Len is how many strings were added.
func (l *Strings) Len() int { return l.n }

// Spooled says whether the list went to a file.
func (l *Strings) Spooled() bool { return l.f != nil }

// Each calls fn with each string and its place, in the order added, until
// fn fails; its error is returned.
func (l *Strings) Each(fn func(i int, s string) error) error {
	var r reader = bytes.NewReader(l.mem)
	if l.f != nil {
		if err := l.w.Flush(); err != nil {
			return fmt.Errorf("spooling: %w", err)
		}
		l.read = true
		if _, err := l.f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("reading back the spool: %w", err)
		}
		r = bufio.NewReader(l.f)
	}
	var buf []byte
	for i := range l.n {
		var err error
		if buf, err = next(r, buf); err != nil {
			return err
		}
		if err := fn(i, string(buf)); err != nil {
			return err
		}
	}
	return nil
}

// At is the string added i-th (from 0). It reads from where the nearest
// string before it that has its place kept begins: in a file, a read of a
// few kilobytes.
func (l *Strings) At(i int) (string, error) {
	if i < 0 || i >= l.n {
		return "", fmt.Errorf("spool: string %d of %d", i, l.n)
	}
	from := l.marks[i/stride]
	var r reader
	if l.f == nil {
		r = bytes.NewReader(l.mem[from:])
	} else {
		if l.w.Buffered() > 0 {
			if err := l.w.Flush(); err != nil {
				return "", fmt.Errorf("spooling: %w", err)
			}
		}
		// Reads at an offset leave the file's own where it is.
		section := io.NewSectionReader(l.f, from, l.size-from)
		if l.at == nil {
			l.at = bufio.NewReaderSize(section, 4096)
		} else {
			l.at.Reset(section)
		}
		r = l.at
	}
	var buf []byte
	for range i%stride + 1 {
		var err error
		if buf, err = next(r, buf); err != nil {
			return "", err
		}
	}
	return string(buf), nil
}

// next reads the next string from r into buf.
func next(r reader, buf []byte) ([]byte, error) {
	size, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("reading back the spool: %w", err)
	}
	buf = slices.Grow(buf[:0], int(size))[:size]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("reading back the spool: %w", err)
	}
	return buf, nil
}

// reader is what Each reads the strings from.
type reader interface {
	io.Reader
	io.ByteReader
}

// Close lets go of the file, if there is one.
func (l *Strings) Close() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f, l.w = nil, nil
	return err
}
