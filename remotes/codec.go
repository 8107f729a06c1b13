package remotes

import (
	"errors"
	"fmt"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// downloadCodec is the client's gRPC codec: protobuf, as the default one,
// except for the two answers that carry blobs, which are asked for as
// heldBatch and heldRead. Those keep their data where the message was
// gathered, in a buffer of downloadPool that the caller gives back once
// the data is stored, instead of copying it out (protobuf's Unmarshal
// copies every bytes field into new memory). A download's bytes are
// copied once between the connection and the file, into memory used
// again and again: fresh memory costs a page fault per page.
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
		return decodeBatchRead(m.hold(data), &m.BatchReadBlobsResponse)
	case *heldRead:
		return decodeReadResponse(m.hold(data), &m.ReadResponse)
	}
	return c.proto.Unmarshal(data, v)
}

// held is the buffer a download answer was decoded in: its data fields
// are valid until free.
type held struct{ buf mem.Buffer }

// hold keeps data's bytes in one buffer of downloadPool (gRPC frees data
// itself once Unmarshal returns) and returns them; what it held before is
// given back.
func (h *held) hold(data mem.BufferSlice) []byte {
	h.free()
	h.buf = data.MaterializeToBuffer(downloadPool)
	return h.buf.ReadOnlyData()
}

// free gives the buffer back to the pool; the answer's data must not be
// used after.
func (h *held) free() {
	if h.buf != nil {
		h.buf.Free()
		h.buf = nil
	}
}

// heldBatch is a BatchReadBlobsResponse whose entries' data live in its
// buffer.
type heldBatch struct {
	repb.BatchReadBlobsResponse
	held
}

// heldRead is a ByteStream ReadResponse whose data lives in its buffer.
type heldRead struct {
	bspb.ReadResponse
	held
}

// errWire is a message that is not valid protobuf.
var errWire = errors.New("malformed protobuf message")

// fields calls fn with each field of the message in b: its number, wire
// type and value (a bytes field's contents, else the encoded value).
func fields(b []byte, fn func(protowire.Number, protowire.Type, []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: %v", errWire, protowire.ParseError(n))
		}
		b = b[n:]
		var val []byte
		if typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("%w: %v", errWire, protowire.ParseError(n))
			}
			val, b = v, b[n:]
		} else {
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: %v", errWire, protowire.ParseError(n))
			}
			val, b = b[:n], b[n:]
		}
		if err := fn(num, typ, val); err != nil {
			return err
		}
	}
	return nil
}

// decodeReadResponse decodes a ReadResponse whose data aliases b. Fields
// other than data (10) are skipped, as protobuf would keep them unknown.
func decodeReadResponse(b []byte, m *bspb.ReadResponse) error {
	m.Reset()
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num == 10 && typ == protowire.BytesType {
			m.Data = v
		}
		return nil
	})
}

// decodeBatchRead decodes a BatchReadBlobsResponse whose entries' data
// alias b; their digests and statuses are decoded by protobuf.
func decodeBatchRead(b []byte, m *repb.BatchReadBlobsResponse) error {
	m.Reset()
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num != 1 || typ != protowire.BytesType {
			return nil
		}
		r := &repb.BatchReadBlobsResponse_Response{}
		if err := decodeBatchEntry(v, r); err != nil {
			return err
		}
		m.Responses = append(m.Responses, r)
		return nil
	})
}

func decodeBatchEntry(b []byte, r *repb.BatchReadBlobsResponse_Response) error {
	// A message field seen twice merges, as protobuf merges it.
	merge := proto.UnmarshalOptions{Merge: true}
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		switch {
		case num == 1 && typ == protowire.BytesType:
			if r.Digest == nil {
				r.Digest = &repb.Digest{}
			}
			return merge.Unmarshal(v, r.Digest)
		case num == 2 && typ == protowire.BytesType:
			r.Data = v
		case num == 3 && typ == protowire.BytesType:
			if r.Status == nil {
				r.Status = &statuspb.Status{}
			}
			return merge.Unmarshal(v, r.Status)
		case num == 4 && typ == protowire.VarintType:
			c, _ := protowire.ConsumeVarint(v)
			r.Compressor = repb.Compressor_Value(int32(c))
		}
		return nil
	})
}
