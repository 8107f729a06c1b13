package zstdwire

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, 1000, 3 << 20} {
		data := bytes.Repeat([]byte("bst-cache "), size/10+1)[:size]
		got, err := Decompress(Compress(data), int64(size))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("size %d: round trip gives %d bytes, %v", size, len(got), err)
		}
		var buf bytes.Buffer
		w := NewWriter(&buf)
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if n, err := Copy(&out, &buf, int64(size)); err != nil || n != int64(size) || !bytes.Equal(out.Bytes(), data) {
			t.Errorf("size %d: stream round trip gives %d bytes, %v", size, n, err)
		}
	}
}

// A zstd bomb (a few KiB that inflate to 1 GiB) is refused after the
// digest's size, not inflated.
func TestBombIsBounded(t *testing.T) {
	var bomb bytes.Buffer
	w := NewWriter(&bomb)
	zeros := make([]byte, 1<<20)
	for range 1024 {
		w.Write(zeros)
	}
	w.Close()
	if bomb.Len() > 1<<20 {
		t.Fatalf("the bomb is %d bytes", bomb.Len())
	}
	if _, err := Decompress(bomb.Bytes(), 4096); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Decompress of a bomb: %v, want ErrTooLarge", err)
	}
	counted := &countWriter{}
	if _, err := Copy(counted, bytes.NewReader(bomb.Bytes()), 4096); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Copy of a bomb: %v, want ErrTooLarge", err)
	}
	if counted.n > 4097 {
		t.Errorf("Copy wrote %d bytes for a limit of 4096", counted.n)
	}
}

func TestShortAndCorrupt(t *testing.T) {
	data := []byte(strings.Repeat("abc", 1000))
	if _, err := Decompress(Compress(data), 3001); err == nil {
		t.Error("data shorter than its digest decompressed")
	}
	z := Compress(data)
	if _, err := Decompress(z[:len(z)/2], 3000); err == nil {
		t.Error("a truncated frame decompressed")
	}
	if _, err := Decompress([]byte("not zstd at all"), 15); err == nil {
		t.Error("garbage decompressed")
	}
}

// An error of the stream under the decoder comes back as itself.
func TestReaderErrorIsKept(t *testing.T) {
	broken := errors.New("stream broke")
	data := make([]byte, 300000)
	rand.Read(data)
	z := Compress(data)
	r := io.MultiReader(bytes.NewReader(z[:len(z)/2]), errAfter{broken})
	if _, err := Copy(io.Discard, r, 300000); !errors.Is(err, broken) {
		t.Errorf("Copy: %v, want the reader's own error", err)
	}
}

type errAfter struct{ err error }

func (e errAfter) Read([]byte) (int, error) { return 0, e.err }

type countWriter struct{ n int }

func (c *countWriter) Write(p []byte) (int, error) { c.n += len(p); return len(p), nil }

// Data not worth compressing goes out in raw blocks, which any zstd
// decoder reads; data that is, compressed. Both come back byte for byte.
func TestWriterFor(t *testing.T) {
	random := make([]byte, 3<<20+17)
	rand.Read(random)
	text := bytes.Repeat([]byte("compressible build output "), 100000)
	for _, tc := range []struct {
		name       string
		data       []byte
		compresses bool
	}{
		{"random", random, false},
		{"text", text, true},
		{"empty", nil, false},
		{"one block", random[:rawBlock], false},
	} {
		if got := Compressible(tc.data); got != tc.compresses {
			t.Errorf("%s: Compressible = %t", tc.name, got)
		}
		var frame bytes.Buffer
		w := NewWriterFor(&frame, tc.data)
		for p := tc.data; len(p) > 0; p = p[min(len(p), 50000):] {
			w.Write(p[:min(len(p), 50000)])
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if tc.compresses && frame.Len() > len(tc.data)/4 || !tc.compresses && frame.Len() > len(tc.data)+len(tc.data)/1000+16 {
			t.Errorf("%s: %d bytes of frame for %d of data", tc.name, frame.Len(), len(tc.data))
		}
		got, err := Decompress(frame.Bytes(), int64(len(tc.data)))
		if err != nil || !bytes.Equal(got, tc.data) {
			t.Errorf("%s: the frame inflates to %d bytes, %v", tc.name, len(got), err)
		}
	}
}
