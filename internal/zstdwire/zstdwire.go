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

// window is the window our encoders use: 1 MiB keeps a decoder's memory
// small (the peer's decoder reserves a window per stream) and costs the
// fastest level little ratio.
const window = 1 << 20

// encoderOptions are shared by every encoder: the fastest level keeps a
// client or server that compresses on the fly from being bound by its CPU
// on links of up to a few hundred Mbit/s.
var encoderOptions = []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(window), zstd.WithLowerEncoderMem(true)}

// encoder is shared: EncodeAll is safe for concurrent use.
var encoder = must(zstd.NewWriter(nil, encoderOptions...))

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
	e, err := zstd.NewWriter(nil, encoderOptions...)
	if err != nil {
		panic(err)
	}
	return e
}}

// Compress returns data compressed as one zstd frame.
func Compress(data []byte) []byte {
	return encoder.EncodeAll(data, make([]byte, 0, len(data)/2+64))
}

// minCompress is the smallest batch entry worth compressing: below it the
// frame header eats most of the gain.
const minCompress = 256

// CompressEntry is a batch entry's data as it should travel: compressed
// (ok true) when that makes it smaller, else as it is.
func CompressEntry(data []byte) (out []byte, ok bool) {
	if len(data) < minCompress {
		return data, false
	}
	if z := Compress(data); len(z) < len(data) {
		return z, true
	}
	return data, false
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

// InflateInto is Inflate into dst's memory, for a caller that knows where
// the data may go: dst must have a capacity of at least size (its length
// does not matter), and the data inflated comes back in dst[:size]. Data
// sent as it is comes back as it is, not copied. It allocates nothing:
// a batch's entries inflate into one buffer used again and again, where
// Decompress gives each entry fresh memory and a stream decoder.
func InflateInto(c repb.Compressor_Value, data []byte, size int64, dst []byte) ([]byte, error) {
	switch c {
	case repb.Compressor_IDENTITY:
		return data, nil
	case repb.Compressor_ZSTD:
	default:
		return nil, fmt.Errorf("compressor %s is not supported", c)
	}
	if int64(cap(dst)) < size {
		return nil, fmt.Errorf("zstd: %d bytes of room for %d", cap(dst), size)
	}
	// The decoder writes no further than dst's capacity (the cap
	// limit): the bound is the digest's size.
	out, err := allDecoder().DecodeAll(data, dst[:0:size])
	switch {
	case errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return nil, ErrTooLarge
	case err != nil:
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	case int64(len(out)) != size:
		return nil, fmt.Errorf("zstd data inflates to %d bytes, the digest says %d", len(out), size)
	}
	return out, nil
}

// allDecoder is InflateInto's, made on first use: DecodeAll is safe for
// concurrent use, limited to dst's capacity, and decodes a whole entry
// with no stream set up.
var allDecoder = sync.OnceValue(func() *zstd.Decoder {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(maxWindow), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		panic(err)
	}
	return d
})

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
// (no byte past limit reaches dst); an error reading src or writing dst
// is returned as it is. The decoder hands dst its blocks as they are
// decoded, with no copy between.
func Copy(dst io.Writer, src io.Reader, limit int64) (int64, error) {
	d := decoders.Get().(*zstd.Decoder)
	defer func() {
		d.Reset(nil) // drop src: the pool must not keep a stream alive
		decoders.Put(d)
	}()
	r := &errReader{r: src}
	if err := d.Reset(r); err != nil {
		return 0, r.cause(err)
	}
	w := &errWriter{w: dst, left: limit}
	n, err := d.WriteTo(w)
	switch {
	case w.err != nil:
		return n, w.err
	case err != nil:
		return n, r.cause(err)
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

// errWriter passes at most left bytes on to w, failing with ErrTooLarge
// past them, and remembers the error of the destination, which is
// returned as it is (a full disk is not corrupt data).
type errWriter struct {
	w    io.Writer
	left int64
	err  error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > e.left {
		e.err = ErrTooLarge
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.left -= int64(n)
	if err != nil {
		e.err = err
	}
	return n, err
}

// SampleBytes is how much of a blob Compressible looks at.
const SampleBytes = 128 << 10

// Compressible says whether data that starts with head is worth
// compressing: whether zstd's fastest level takes at least a tenth off
// its first 128 KiB. Random or already compressed content is not, and is
// better sent as it is than through an encoder that finds nothing.
func Compressible(head []byte) bool {
	head = head[:min(len(head), SampleBytes)]
	if len(head) < 64 {
		return false
	}
	return len(Compress(head)) < len(head)*9/10
}

// Writer writes what is written to it into w as one zstd frame:
// compressed, or in raw blocks (a frame any decoder reads, at the cost of
// a copy) when the data is not worth compressing.
type Writer struct {
	e   *zstd.Encoder
	raw *rawFrame
}

// NewWriter starts a compressed frame into w. Close ends it and must be
// called.
func NewWriter(w io.Writer) *Writer {
	e := streamEncoders.Get().(*zstd.Encoder)
	e.Reset(w)
	return &Writer{e: e}
}

// NewWriterFor starts a frame into w for data that starts with head:
// compressed when Compressible(head), in raw blocks otherwise.
func NewWriterFor(w io.Writer, head []byte) *Writer {
	if Compressible(head) {
		return NewWriter(w)
	}
	return &Writer{raw: newRawFrame(w)}
}

func (w *Writer) Write(p []byte) (int, error) {
	if w.raw != nil {
		return w.raw.Write(p)
	}
	return w.e.Write(p)
}

// Close ends the frame and returns the encoder to the pool.
func (w *Writer) Close() error {
	if w.raw != nil {
		return w.raw.close()
	}
	err := w.e.Close()
	w.e.Reset(nil)
	streamEncoders.Put(w.e)
	w.e = nil
	return err
}

// rawBlock is the largest block of a raw frame: zstd's largest block, and
// the frame's window.
const rawBlock = 128 << 10

// rawFrame writes a zstd frame of raw blocks (RFC 8878 section 3.1.1):
// the magic number, a frame header that declares a 128 KiB window and no
// content size or checksum, then each write as blocks of at most 128 KiB,
// each after its 3-byte header, and an empty last block at the end. It
// buffers nothing: the data goes on as it came.
type rawFrame struct {
	w       io.Writer
	started bool
}

func newRawFrame(w io.Writer) *rawFrame { return &rawFrame{w: w} }

// rawHeader is the magic number, a Frame_Header_Descriptor of 0 (no
// single segment, no checksum, no content size, no dictionary) and a
// Window_Descriptor of 2^17 bytes (exponent 7, mantissa 0).
var rawHeader = []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3}

func (f *rawFrame) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), rawBlock)
		if err := f.block(p[:k], false); err != nil {
			return 0, err
		}
		p = p[k:]
	}
	return n, nil
}

// block writes one raw block, marked last when last.
func (f *rawFrame) block(data []byte, last bool) error {
	if !f.started {
		if _, err := f.w.Write(rawHeader); err != nil {
			return err
		}
		f.started = true
	}
	h := uint32(len(data)) << 3 // Block_Type 0: raw
	if last {
		h |= 1
	}
	if _, err := f.w.Write([]byte{byte(h), byte(h >> 8), byte(h >> 16)}); err != nil {
		return err
	}
	_, err := f.w.Write(data)
	return err
}

func (f *rawFrame) close() error { return f.block(nil, true) }
