package remotes

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"unsafe"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// frames cuts b into buffers of 16 KiB, as HTTP/2 frames bring a message.
func frames(b []byte) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		n := min(len(b), 16<<10)
		s = append(s, mem.SliceBuffer(bytes.Clone(b[:n])))
		b = b[n:]
	}
	return s
}

func blob(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// The download codec decodes both answers that carry blobs as protobuf
// does, merged digests included, unknown fields dropped; anything else
// goes to protobuf itself.
func TestDownloadCodecDecodesAsProtobuf(t *testing.T) {
	codec := downloadCodec{encoding.GetCodecV2("proto")}
	batch := &repb.BatchReadBlobsResponse{Responses: []*repb.BatchReadBlobsResponse_Response{
		{Digest: &repb.Digest{Hash: "aa", SizeBytes: 40000}, Data: blob(40000, 1), Status: &statuspb.Status{}},
		{Digest: &repb.Digest{Hash: "bb", SizeBytes: 3}, Status: &statuspb.Status{Code: int32(codes.NotFound), Message: "gone"}},
		{Digest: &repb.Digest{Hash: "cc", SizeBytes: 9}, Data: blob(5, 2), Compressor: repb.Compressor_ZSTD},
	}}
	wire, err := proto.Marshal(batch)
	if err != nil {
		t.Fatal(err)
	}
	// An unknown field, and a digest sent in two parts (merged).
	wire = protowire.AppendTag(wire, 99, protowire.VarintType)
	wire = protowire.AppendVarint(wire, 7)
	extra, _ := proto.Marshal(&repb.BatchReadBlobsResponse_Response{Digest: &repb.Digest{Hash: "dd"}})
	more, _ := proto.Marshal(&repb.BatchReadBlobsResponse_Response{Digest: &repb.Digest{SizeBytes: 4}, Data: []byte("abcd")})
	wire = protowire.AppendTag(wire, 1, protowire.BytesType)
	wire = protowire.AppendBytes(wire, append(extra, more...))

	stale := &heldRead{}
	stale.data = [][]byte{[]byte("stale")}
	for _, c := range []struct {
		name string
		wire []byte
		got  any
		msg  func() proto.Message
		want proto.Message
	}{
		{"BatchReadBlobsResponse", wire, &heldBatch{}, nil, &repb.BatchReadBlobsResponse{}},
		{"ReadResponse", mustMarshal(t, &bspb.ReadResponse{Data: blob(100000, 3)}), &heldRead{}, nil, &bspb.ReadResponse{}},
		{"empty ReadResponse", nil, stale, nil, &bspb.ReadResponse{}},
		{"another message", mustMarshal(t, &repb.Digest{Hash: "ee", SizeBytes: 1}), &repb.Digest{}, nil, &repb.Digest{}},
	} {
		// Unknown fields are dropped: nothing reads them.
		if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(c.wire, c.want); err != nil {
			t.Fatal(err)
		}
		if err := codec.Unmarshal(frames(c.wire), c.got); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var got proto.Message
		switch m := c.got.(type) {
		case *heldBatch:
			got = m.asProto()
			defer m.free()
		case *heldRead:
			got = &bspb.ReadResponse{Data: bytes.Join(m.data, nil)}
			defer m.free()
		default:
			got = m.(proto.Message)
		}
		if !proto.Equal(got, c.want) {
			t.Errorf("%s: decoded differently from protobuf", c.name)
		}
	}
	truncated := mustMarshal(t, &bspb.ReadResponse{Data: blob(1000, 4)})[:500]
	if err := codec.Unmarshal(frames(truncated), &heldRead{}); err == nil {
		t.Error("a truncated ReadResponse decoded")
	}
	truncated = wire[:len(wire)-3]
	if err := codec.Unmarshal(frames(truncated), &heldBatch{}); err == nil {
		t.Error("a truncated BatchReadBlobsResponse decoded")
	}
}

// A batch answer is read where it came (issue 21: a pull's CPU per GB;
// gathering every answer into one buffer was a copy of every byte
// pulled): each entry's data is pieces of the frames themselves, a
// message that came in one buffer is not copied at all, and decoding an
// answer of 200 blobs takes no memory for their bytes.
func TestBatchAnswerIsNotGathered(t *testing.T) {
	codec := downloadCodec{encoding.GetCodecV2("proto")}
	var sent []*repb.BatchReadBlobsResponse_Response
	for i := range 200 {
		n := 512 + i*97
		sent = append(sent, &repb.BatchReadBlobsResponse_Response{Digest: &repb.Digest{Hash: fmt.Sprint(i), SizeBytes: int64(n)}, Data: blob(n, byte(i))})
	}
	in := frames(mustMarshal(t, &repb.BatchReadBlobsResponse{Responses: sent}))
	kept := downloadPool
	downloadPool = &keptPool{} // keeps nothing: every buffer taken is new
	defer func() { downloadPool = kept }()
	inFrames := func(p []byte) bool {
		for _, b := range in {
			f := b.ReadOnlyData()
			if len(p) > 0 && len(f) > 0 && uintptr(unsafe.Pointer(&p[0])) >= uintptr(unsafe.Pointer(&f[0])) &&
				uintptr(unsafe.Pointer(&p[len(p)-1])) <= uintptr(unsafe.Pointer(&f[len(f)-1])) {
				return true
			}
		}
		return false
	}
	var got heldBatch
	decode := func() {
		if err := codec.Unmarshal(in, &got); err != nil {
			t.Fatal(err)
		}
	}
	decode()
	if len(got.entries) != len(sent) {
		t.Fatalf("%d entries, want %d", len(got.entries), len(sent))
	}
	spanning := 0
	for i, e := range got.entries {
		if !bytes.Equal(bytes.Join(e.data, nil), sent[i].Data) {
			t.Fatalf("entry %d: wrong data", i)
		}
		if len(e.data) > 1 {
			spanning++
		}
		for _, p := range e.data {
			if !inFrames(p) {
				t.Fatalf("entry %d: its data is not the frames' own bytes", i)
			}
		}
	}
	if spanning == 0 {
		t.Fatal("no entry lies in two frames: the test tests nothing")
	}
	got.free()
	// The digests and statuses are decoded: some bytes a blob, not the
	// blobs' 4.5 MB.
	if each := bytesEach(func() { decode(); got.free() }); each > 100<<10 {
		t.Errorf("decoding a batch answer of 200 blobs (%d bytes) allocates %d bytes", in.Len(), each)
	}

	one := mustMarshal(t, &repb.BatchReadBlobsResponse{Responses: sent[:2]})
	if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(one)}, &got); err != nil {
		t.Fatal(err)
	}
	defer got.free()
	if data := got.entries[1].data; len(data) != 1 || &data[0][len(data[0])-1] != &one[len(one)-1] {
		t.Error("a message in one buffer was copied")
	}
}

// asProto is h's entries as protobuf decodes them.
func (h *heldBatch) asProto() *repb.BatchReadBlobsResponse {
	m := &repb.BatchReadBlobsResponse{}
	for _, e := range h.entries {
		m.Responses = append(m.Responses, &repb.BatchReadBlobsResponse_Response{Digest: e.digest, Status: e.status, Compressor: e.compressor, Data: bytes.Join(e.data, nil)})
	}
	return m
}

// A ByteStream ReadResponse that came in frames is read where it came:
// its data is the frames' own bytes, and decoding it takes no memory of
// its own (gathering a 1 MiB message cost 1 MiB, and the memory faulted
// in, whenever the pool had no buffer of its size free).
func TestReadResponseIsNotGathered(t *testing.T) {
	codec := downloadCodec{encoding.GetCodecV2("proto")}
	data := blob(1<<20, 9)
	in := frames(mustMarshal(t, &bspb.ReadResponse{Data: data}))
	kept := downloadPool
	downloadPool = &keptPool{} // keeps nothing: every buffer taken is new
	defer func() { downloadPool = kept }()
	var read heldRead
	decode := func() {
		if err := codec.Unmarshal(in, &read); err != nil {
			t.Fatal(err)
		}
	}
	decode()
	if got := bytes.Join(read.data, nil); !bytes.Equal(got, data) {
		t.Fatalf("decoded %d bytes, not the message's %d", len(got), len(data))
	}
	last, frame := read.data[len(read.data)-1], in[len(in)-1].ReadOnlyData()
	if &last[len(last)-1] != &frame[len(frame)-1] {
		t.Fatal("the data is not the frames' own bytes")
	}
	read.free()
	if each := bytesEach(func() { decode(); read.free() }); each > 4<<10 {
		t.Errorf("decoding a 1 MiB ReadResponse in 16 KiB frames allocates %d bytes, want none", each)
	}
}

// bytesEach is what one call of f allocates, the mean of 20 calls.
func bytesEach(f func()) uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	for range 20 {
		f()
	}
	runtime.ReadMemStats(&ms)
	return (ms.TotalAlloc - before) / 20
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func BenchmarkDecodeReadResponse(b *testing.B) {
	wire, _ := proto.Marshal(&bspb.ReadResponse{Data: blob(1<<20, 7)})
	for _, c := range []struct {
		name  string
		codec encoding.CodecV2
	}{{"protobuf", encoding.GetCodecV2("proto")}, {"download", downloadCodec{encoding.GetCodecV2("proto")}}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(wire)))
			for b.Loop() {
				var m heldRead
				if err := c.codec.Unmarshal(frames(wire), &m); err != nil {
					b.Fatal(err)
				}
				m.free()
			}
		})
	}
}

// A ReadResponse read from its frames decodes as protobuf does, however
// the frames cut it (through a tag, a length, the data): unknown fields of
// every wire type skipped, the last data field winning, a group decoded
// through the whole message, and a truncated or malformed one refused.
func TestReadResponseAcrossFrames(t *testing.T) {
	data := blob(3000, 11)
	var wire []byte
	wire = protowire.AppendTag(wire, 3, protowire.VarintType)
	wire = protowire.AppendVarint(wire, 1<<40)
	wire = protowire.AppendTag(wire, 10, protowire.BytesType)
	wire = protowire.AppendBytes(wire, []byte("first, replaced"))
	wire = protowire.AppendTag(wire, 4, protowire.Fixed32Type)
	wire = protowire.AppendFixed32(wire, 7)
	wire = protowire.AppendTag(wire, 10, protowire.BytesType)
	wire = protowire.AppendBytes(wire, data)
	wire = protowire.AppendTag(wire, 5, protowire.Fixed64Type)
	wire = protowire.AppendFixed64(wire, 9)
	wire = protowire.AppendTag(wire, 2000, protowire.BytesType)
	wire = protowire.AppendBytes(wire, blob(500, 12))
	group := protowire.AppendTag(nil, 6, protowire.StartGroupType)
	group = protowire.AppendTag(group, 1, protowire.VarintType)
	group = protowire.AppendVarint(group, 5)
	group = protowire.AppendTag(group, 6, protowire.EndGroupType)
	codec := downloadCodec{encoding.GetCodecV2("proto")}
	cut := func(b []byte, n int) mem.BufferSlice {
		var s mem.BufferSlice
		for len(b) > 0 {
			k := min(len(b), n)
			s = append(s, mem.SliceBuffer(bytes.Clone(b[:k])))
			b = b[k:]
		}
		return s
	}
	for _, c := range []struct {
		name string
		wire []byte
	}{{"unknown fields", wire}, {"a group", append(bytes.Clone(wire), group...)}} {
		var want bspb.ReadResponse
		if err := proto.Unmarshal(c.wire, &want); err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{1, 2, 3, 7, 1000, len(c.wire)} {
			var got heldRead
			if err := codec.Unmarshal(cut(c.wire, n), &got); err != nil {
				t.Fatalf("%s in frames of %d: %v", c.name, n, err)
			}
			if !bytes.Equal(bytes.Join(got.data, nil), want.Data) {
				t.Errorf("%s in frames of %d: %d bytes of data, want %d", c.name, n, len(bytes.Join(got.data, nil)), len(want.Data))
			}
			got.free()
		}
	}
	for _, bad := range [][]byte{
		wire[:len(wire)-1], // cut in a field
		{0x52, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, // a length of 11 bytes
		{0x02, 0x00}, // field number 0
		protowire.AppendTag(nil, 10, protowire.BytesType), // no length
	} {
		if err := codec.Unmarshal(cut(bad, 3), &heldRead{}); err == nil {
			t.Errorf("% x decoded", bad)
		}
		if err := proto.Unmarshal(bad, &bspb.ReadResponse{}); err == nil {
			t.Errorf("protobuf decodes % x: the case is wrong", bad)
		}
	}
}
