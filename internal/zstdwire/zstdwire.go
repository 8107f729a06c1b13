package zstdwire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/klauspost/compress/zstd"
)

// ErrTooLarge is returned when compressed data inflates past the size its
// digest says.
var ErrTooLarge = errors.New("zstd data inflates past the digest's size")

// ErrCorrupt is returned for data that is not a valid zstd stream.
var ErrCorrupt = errors.New("corrupt zstd data")

// Compressor is the lowercase name REAPI resource names use.
const Compressor = "zstd"

// maxWindow bounds the memory a decoder may reserve for one frame's
// window, whatever its header asks for: 8 MiB is what zstd's own levels up
// to 19 use for files of any size.
const maxWindow = 8 << 20

// encoder is shared: EncodeAll is safe for concurrent use. The fastest
// level keeps a client or server that compresses on the fly from being
// bound by its CPU on links of up to a few hundred Mbit/s.
var encoder = must(zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1)))

func must(e *zstd.Encoder, err error) *zstd.Encoder {
	if err != nil {
		panic(err)
	}
	return e
}

var decoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(maxWindow))
	if err != nil {
		panic(err)
	}
	return d
}}

var streamEncoders = sync.Pool{New: func() any {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err)
	}
	return e
}}

// Compress returns data compressed as one zstd frame.
func Compress(data []byte) []byte {
	return encoder.EncodeAll(data, make([]byte, 0, len(data)/2+64))
}

// Inflate is the data of one batch entry sent with compressor c, which
// must come to exactly size bytes: as it is for IDENTITY, decompressed for
// ZSTD, and an error for any other compressor.
func Inflate(c repb.Compressor_Value, data []byte, size int64) ([]byte, error) {
	switch c {
	case repb.Compressor_IDENTITY:
		return data, nil
	case repb.Compressor_ZSTD:
		return Decompress(data, size)
	}
	return nil, fmt.Errorf("compressor %s is not supported", c)
}

// Decompress inflates one batch entry that must come to exactly size
// bytes.
func Decompress(data []byte, size int64) ([]byte, error) {
	var out bytes.Buffer
	out.Grow(int(min(size, 64<<20)))
	n, err := Copy(&out, bytes.NewReader(data), size)
	if err != nil {
		return nil, err
	}
	if n != size {
		return nil, fmt.Errorf("zstd data inflates to %d bytes, the digest says %d", n, size)
	}
	return out.Bytes(), nil
}

// Copy inflates the zstd stream in src into dst and returns the bytes
// written. It fails with ErrTooLarge once more than limit bytes come out
// (at most one byte more reaches dst); an error reading src or writing
// dst is returned as it is.
func Copy(dst io.Writer, src io.Reader, limit int64) (int64, error) {
	d := decoders.Get().(*zstd.Decoder)
	defer decoders.Put(d)
	r := &errReader{r: src}
	if err := d.Reset(r); err != nil {
		return 0, r.cause(err)
	}
	w := &errWriter{w: dst}
	n, err := io.Copy(w, io.LimitReader(d, limit+1))
	switch {
	case w.err != nil:
		return n, w.err
	case err != nil:
		return n, r.cause(err)
	}
	if n > limit {
		return n, ErrTooLarge
	}
	return n, nil
}

// errReader remembers the error of the reader under the decoder, so that
// a broken stream is reported as itself and not as corrupt zstd data.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		e.err = err
	}
	return n, err
}

func (e *errReader) cause(err error) error {
	if e.err != nil {
		return e.err
	}
	return fmt.Errorf("%w: %v", ErrCorrupt, err)
}

// errWriter remembers the error of the destination, which is returned as
// it is (a full disk is not corrupt data).
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil {
		e.err = err
	}
	return n, err
}

// Writer compresses what is written to it into w, in one zstd frame.
type Writer struct {
	e *zstd.Encoder
}

// NewWriter starts a frame into w. Close ends it and must be called.
func NewWriter(w io.Writer) *Writer {
	e := streamEncoders.Get().(*zstd.Encoder)
	e.Reset(w)
	return &Writer{e: e}
}

func (w *Writer) Write(p []byte) (int, error) { return w.e.Write(p) }

// Flush sends what is buffered so far as a complete block.
func (w *Writer) Flush() error { return w.e.Flush() }

// Close ends the frame and returns the encoder to the pool.
func (w *Writer) Close() error {
	err := w.e.Close()
	w.e.Reset(nil)
	streamEncoders.Put(w.e)
	w.e = nil
	return err
}
