package spool

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestStrings(t *testing.T) {
	many := make([]string, 5000)
	for i := range many {
		many[i] = fmt.Sprintf("proj/element-%d/%064x", i, i)
	}
	for _, tc := range []struct {
		name    string
		memory  int
		in      []string
		spooled bool
	}{
		{"empty", 0, nil, false},
		{"in memory", 0, []string{"a", "", "b\nc", strings.Repeat("x", 300)}, false},
		{"past the bound: in a file", 64, []string{"a", "", "b\nc", strings.Repeat("x", 300), "d"}, true},
		{"a long list", 4096, many, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			l := New(tc.memory)
			defer l.Close()
			for _, s := range tc.in {
				if err := l.Add(s); err != nil {
					t.Fatal(err)
				}
			}
			if l.Len() != len(tc.in) || l.Spooled() != tc.spooled {
				t.Errorf("Len %d, Spooled %v; want %d, %v", l.Len(), l.Spooled(), len(tc.in), tc.spooled)
			}
			// Read back twice: the same strings, in order, with their places.
			for range 2 {
				var got []string
				if err := l.Each(func(i int, s string) error {
					if i != len(got) {
						t.Fatalf("place %d for the string after %d", i, len(got))
					}
					got = append(got, s)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, tc.in) {
					t.Fatalf("read back %d strings, not the %d added in order", len(got), len(tc.in))
				}
			}
			// Each string by its place, from the last (every place
			// kept and between two), and reading in order again after.
			for i := len(tc.in) - 1; i >= 0; i-- {
				if s, err := l.At(i); err != nil || s != tc.in[i] {
					t.Fatalf("At(%d) = %.20q, %v; want %.20q", i, s, err, tc.in[i])
				}
			}
			if _, err := l.At(len(tc.in)); err == nil {
				t.Errorf("At past the end: no error")
			}
			n := 0
			l.Each(func(i int, s string) error {
				if s == tc.in[i] {
					n++
				}
				return nil
			})
			if n != len(tc.in) {
				t.Errorf("after At, Each read back %d of %d strings", n, len(tc.in))
			}
			// The file has no name.
			if left, _ := os.ReadDir(tmp); len(left) != 0 {
				t.Errorf("%d files named in TMPDIR", len(left))
			}
		})
	}
}

// Adding after a read stopped early appends, and overwrites nothing.
func TestStringsAddAfterPartialRead(t *testing.T) {
	l := New(16)
	defer l.Close()
	// Longer than a read's buffer: a read stopped early leaves the file's
	// offset in the middle.
	want := []string{strings.Repeat("1", 5000), strings.Repeat("2", 5000), "third"}
	for _, s := range want[:2] {
		l.Add(s)
	}
	stop := fmt.Errorf("stop")
	if err := l.Each(func(int, string) error { return stop }); err != stop {
		t.Fatalf("Each returned %v, want fn's error", err)
	}
	l.Add(want[2])
	// At reads the file where the string is, whatever its offset.
	if s, err := l.At(2); err != nil || s != want[2] {
		t.Errorf("At(2) after adding: %.20q, %v", s, err)
	}
	l.Add("fourth")
	want = append(want, "fourth")
	var got []string
	l.Each(func(_ int, s string) error { got = append(got, s); return nil })
	if !slices.Equal(got, want) {
		t.Errorf("got %d strings, not the %d added", len(got), len(want))
	}
}
