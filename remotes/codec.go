package remotes

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// downloadCodec is the client's gRPC codec: protobuf, as the default one,
// except for the two answers that carry blobs, which are asked for as
// heldBatch and heldRead, instead of copying their data out (protobuf's
// Unmarshal copies every bytes field into new memory). A batch answer
// keeps its blobs where the message was gathered, in a buffer of
// downloadPool that the caller gives back once the data is stored: its
// bytes are copied once between the connection and the file, into memory
// used again and again (fresh memory costs a page fault per page). A
// stream's message is not gathered: its data is read from the frames it
// came in (recvReader).
type downloadCodec struct{ proto encoding.CodecV2 }

// withDownloadCodec makes the connection's calls use downloadCodec.
func withDownloadCodec() grpc.DialOption {
	return grpc.WithDefaultCallOptions(grpc.ForceCodecV2(downloadCodec{encoding.GetCodecV2("proto")}))
}

// Name is the default codec's: the content-subtype servers see is
// unchanged.
func (c downloadCodec) Name() string { return c.proto.Name() }

func (c downloadCodec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c downloadCodec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *heldBatch:
		return m.decode(data)
	case *heldRead:
		return m.decode(data)
	}
	return c.proto.Unmarshal(data, v)
}

// heldBatch is a BatchReadBlobsResponse whose entries' data stay in the
// buffers gRPC received it in (the HTTP/2 frames, 16 KiB each), held until
// free: each entry's data is the pieces of the frames it lies in, no copy.
type heldBatch struct {
	heldFrames
	entries []batchAnswer
	pieces  [][]byte // every entry's data pieces; entries' data are in it
}

// heldFrames are the buffers a message came in, held until release.
type heldFrames struct {
	bufs  mem.BufferSlice
	views [][]byte // the buffers' bytes, kept for the next message
}

// hold takes msg's buffers over (gRPC frees its own references once
// Unmarshal returns) and returns a cursor over their bytes.
func (h *heldFrames) hold(msg mem.BufferSlice) pieceCursor {
	msg.Ref()
	h.bufs = msg
	h.views = h.views[:0]
	for _, b := range msg {
		h.views = append(h.views, b.ReadOnlyData())
	}
	return pieceCursor{rest: h.views}
}

// release gives the buffers back.
func (h *heldFrames) release() {
	h.bufs.Free()
	h.bufs = nil
}

// batchAnswer is one entry of a BatchReadBlobsResponse; data is its data
// field's pieces, in order.
type batchAnswer struct {
	digest     *repb.Digest
	status     *statuspb.Status
	compressor repb.Compressor_Value
	data       [][]byte
}

// free gives the buffers back; the entries must not be used after.
func (h *heldBatch) free() {
	h.release()
	h.entries = h.entries[:0]
	h.pieces = h.pieces[:0]
}

// decode holds msg's buffers and decodes its entries where they lie.
// Fields other than responses (1) are skipped, as protobuf would keep
// them unknown; in an entry, a digest or status seen twice merges, as
// protobuf merges it, and the last data field wins.
func (h *heldBatch) decode(msg mem.BufferSlice) error {
	h.free()
	c := h.hold(msg)
	return c.fields(func(num protowire.Number, c *pieceCursor, n uint64) error {
		if num != 1 {
			return c.skip(n)
		}
		// The entry's bytes, as a cursor of their own: its data pieces
		// are views of the frames.
		var entry [][]byte
		entry, err := c.take(entry, n, true)
		if err != nil {
			return err
		}
		e := batchAnswer{}
		from := len(h.pieces)
		ec := pieceCursor{rest: entry}
		err = ec.fields(func(num protowire.Number, ec *pieceCursor, n uint64) error {
			merge := proto.UnmarshalOptions{Merge: true}
			switch num {
			case 1:
				if e.digest == nil {
					e.digest = &repb.Digest{}
				}
				return ec.unmarshal(n, e.digest, merge)
			case 2:
				h.pieces = h.pieces[:from]
				var err error
				h.pieces, err = ec.take(h.pieces, n, true)
				return err
			case 3:
				if e.status == nil {
					e.status = &statuspb.Status{}
				}
				return ec.unmarshal(n, e.status, merge)
			}
			return ec.skip(n)
		}, func(num protowire.Number, v uint64) {
			if num == 4 {
				e.compressor = repb.Compressor_Value(int32(v))
			}
		})
		if err != nil {
			return err
		}
		e.data = h.pieces[from:len(h.pieces):len(h.pieces)]
		h.entries = append(h.entries, e)
		return nil
	}, nil)
}

// heldRead is a ByteStream ReadResponse whose data stays in the buffers
// gRPC received it in (the HTTP/2 frames, 16 KiB each), held until free.
// data is the pieces of its data field, in order.
type heldRead struct {
	heldFrames
	data [][]byte
}

// free gives the buffers back; data must not be used after.
func (h *heldRead) free() {
	h.release()
	h.data = h.data[:0]
}

// decode holds msg's buffers and finds its data field's pieces in them.
// Fields other than data (10) are skipped, as protobuf would keep them
// unknown, and the last data field wins, as in protobuf.
func (h *heldRead) decode(msg mem.BufferSlice) error {
	h.free()
	c := h.hold(msg)
	return c.fields(func(num protowire.Number, c *pieceCursor, n uint64) error {
		if num != 10 {
			return c.skip(n)
		}
		var err error
		h.data, err = c.take(h.data[:0], n, true)
		return err
	}, nil)
}

// pieceCursor reads a protobuf message that lies in several buffers.
type pieceCursor struct{ rest [][]byte }

func (c *pieceCursor) done() bool {
	for len(c.rest) > 0 && len(c.rest[0]) == 0 {
		c.rest = c.rest[1:]
	}
	return len(c.rest) == 0
}

// varint reads a varint that may straddle buffers.
func (c *pieceCursor) varint() (uint64, error) {
	var v uint64
	for i := 0; i < 10; i++ {
		if c.done() {
			return 0, fmt.Errorf("%w: %v", errWire, io.ErrUnexpectedEOF)
		}
		b := c.rest[0][0]
		c.rest[0] = c.rest[0][1:]
		v |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: a varint of more than 10 bytes", errWire)
}

// take moves past the next n bytes and, with keep, appends them to out
// as views of the buffers they lie in, no copy.
func (c *pieceCursor) take(out [][]byte, n uint64, keep bool) ([][]byte, error) {
	for n > 0 {
		if c.done() {
			return out, fmt.Errorf("%w: %v", errWire, io.ErrUnexpectedEOF)
		}
		k := min(n, uint64(len(c.rest[0])))
		if keep {
			out = append(out, c.rest[0][:k:k])
		}
		c.rest[0] = c.rest[0][k:]
		n -= k
	}
	return out, nil
}

// fields reads a message's fields to its end: bytes fields go to bytes
// with their length (it must consume them), varints to varints (when not
// nil); other fields, groups included, are skipped.
func (c *pieceCursor) fields(bytes func(num protowire.Number, c *pieceCursor, n uint64) error, varints func(num protowire.Number, v uint64)) error {
	for !c.done() {
		tag, err := c.varint()
		if err != nil {
			return err
		}
		num, typ := protowire.DecodeTag(tag)
		if num < protowire.MinValidNumber {
			return fmt.Errorf("%w: field number %d", errWire, num)
		}
		switch typ {
		case protowire.BytesType:
			var n uint64
			if n, err = c.varint(); err == nil {
				err = bytes(num, c, n)
			}
		case protowire.VarintType:
			var v uint64
			if v, err = c.varint(); err == nil && varints != nil {
				varints(num, v)
			}
		default:
			err = c.skipValue(num, typ)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// skipValue moves past a field's value of wire type typ other than
// bytes and varint: fixed ones, and groups to their end.
func (c *pieceCursor) skipValue(num protowire.Number, typ protowire.Type) error {
	switch typ {
	case protowire.Fixed32Type:
		return c.skip(4)
	case protowire.Fixed64Type:
		return c.skip(8)
	case protowire.StartGroupType:
		for {
			tag, err := c.varint()
			if err != nil {
				return err
			}
			n, t := protowire.DecodeTag(tag)
			switch {
			case t == protowire.EndGroupType && n == num:
				return nil
			case t == protowire.BytesType:
				var l uint64
				if l, err = c.varint(); err == nil {
					err = c.skip(l)
				}
			case t == protowire.VarintType:
				_, err = c.varint()
			default:
				err = c.skipValue(n, t)
			}
			if err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("%w: wire type %d", errWire, typ)
}

func (c *pieceCursor) skip(n uint64) error {
	_, err := c.take(nil, n, false)
	return err
}

// unmarshal decodes the next n bytes into m, gathered first when they lie
// in several buffers (a digest or a status: a few bytes).
func (c *pieceCursor) unmarshal(n uint64, m proto.Message, o proto.UnmarshalOptions) error {
	pieces, err := c.take(nil, n, true)
	if err != nil {
		return err
	}
	b := bytes.Join(pieces, nil)
	if len(pieces) == 1 {
		b = pieces[0]
	}
	return o.Unmarshal(b, m)
}

// errWire is a message that is not valid protobuf.
var errWire = errors.New("malformed protobuf message")
