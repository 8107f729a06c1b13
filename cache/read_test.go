package cache

import (
	"bytes"
	"testing"
)

// readUpTo reads everything up to its bound, whatever the reader holds
// against the bound, past the size it preallocates too.
func TestReadUpTo(t *testing.T) {
	big := bytes.Repeat([]byte("x"), preallocated+100)
	for _, c := range []struct {
		have int
		n    int64
		want int
	}{
		{0, 1, 0},
		{10, 11, 10}, // a blob of its size (n is size+1)
		{12, 11, 11}, // a file longer than its digest says
		{5, 11, 5},   // a truncated one
		{preallocated + 100, preallocated + 101, preallocated + 100}, // beyond the preallocation
		{preallocated + 100, preallocated + 50, preallocated + 50},
	} {
		got, err := readUpTo(bytes.NewReader(big[:c.have]), c.n)
		if err != nil || len(got) != c.want {
			t.Errorf("readUpTo(%d bytes, %d) = %d bytes, %v; want %d", c.have, c.n, len(got), err, c.want)
		}
	}
}
