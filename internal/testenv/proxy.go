package testenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/internal/zstdwire"
)

// ProxyFaults are what a Proxy does wrong, by blob hash. No real server
// misbehaves on demand, so the tests put this in front of one.
type ProxyFaults struct {
	// Hide: the blob is reported missing and cannot be read, as on a cache
	// that holds an artifact incompletely.
	Hide map[string]bool
	// Corrupt: the blob's bytes are altered on the way out.
	Corrupt map[string]bool
	// Route sends methods whose full name starts with a key to the
	// address it maps to instead of the backend, as a Buildbarn frontend
	// sends Remote Asset calls to bb_remote_asset and CAS calls to
	// bb_storage.
	Route map[string]string
	// MaxRecvMsgSize, when set, is the largest request message the proxy
	// accepts (RESOURCE_EXHAUSTED "larger than max" beyond it), as a server
	// with a receive limit it does not advertise (Buildbarn's
	// maximumReceivedMessageSizeBytes).
	MaxRecvMsgSize int
	// Tree, when set, makes the proxy answer GetTree itself as a lying
	// server would: "repeat" sends a Directory with the same next page
	// token every time, "empty" pages with no Directories and a new token
	// each time, for ever.
	Tree string
	// Read, when set, makes ByteStream reads misbehave: "empty" answers
	// with empty messages for ever, "trickle" with two bytes a second,
	// "extra" forwards the blob and then sends one byte more; "bomb"
	// answers with a zstd frame of 256 MiB of zeros (a few KiB on the
	// wire), whatever blob was asked for.
	Read string
	// BatchExtra adds to every BatchReadBlobs answer a blob nobody asked
	// for.
	BatchExtra []byte
	// Unanswered names blobs, by hash, that batch answers do not account
	// for, as a server that loses track of part of a batch: a
	// BatchUpdateBlobs request goes on without them (the backend never
	// stores them) and its answer stands for them as Answer says; a
	// BatchReadBlobs answer leaves them out.
	Unanswered map[string]bool
	// Answer is what a BatchUpdateBlobs answer says in place of the
	// blobs it does not account for: "" nothing, "twice" a second OK for
	// another blob of the batch, "other" an OK for a digest not sent.
	Answer string
	// UnansweredCalls, when more than 0, is how many batch calls lose
	// blobs (Unanswered); the calls after answer for every blob.
	UnansweredCalls int64
	// MissingLies makes FindMissingBlobs answers name each missing digest
	// twice and one more that nobody asked about, as a server merging
	// the answers of several backends carelessly.
	MissingLies bool
	// UnavailableFetches answers the first N FetchDirectory calls that name
	// a URI (not the probe's) with UNAVAILABLE, as a server restarting.
	UnavailableFetches int64
	// Unavailable, while it holds more than 0, answers each call
	// UNAVAILABLE without reaching the backend, as a server that is down
	// or restarting, and takes 1 from it: the test sets it to fail the
	// next few calls, or many for a server that is down, and to 0 to
	// bring the server back.
	Unavailable *atomic.Int64
	// CutWrite, when set, cuts the first ByteStream Write with UNAVAILABLE
	// once its messages carried more than this many bytes, as a load
	// balancer or a restarting frontend drops a stream; the backend sees
	// the stream cancelled.
	CutWrite int64
	// Hang, while true, makes every call wait without an answer until the
	// caller gives up, as a server that accepts connections and then
	// stops responding (a hung process, a half-dead link).
	Hang *atomic.Bool
	// StallWrite makes ByteStream writes stall: the proxy takes the first
	// message and then reads nothing more, as a server that stopped
	// taking bytes.
	StallWrite bool
	// OnCall, when set, hears the full method of every call the proxy
	// takes, before anything else: a count of what a client asked.
	OnCall func(method string)
	// OnEnd, when set, hears of every call the proxy took once it ended,
	// with the status code its client got: what a client asked and was
	// answered, counted on the wire.
	OnEnd func(method string, code codes.Code)
}

// rawCodec passes messages through as bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// StartProxy forwards every gRPC call to backend (host:port, plaintext),
// applying faults to CAS and ByteStream answers. It returns its address.
func StartProxy(t testing.TB, backend string, faults ProxyFaults) string {
	t.Helper()
	if faults.Read == "bomb" {
		zstdBomb() // before any client waits on it
	}
	cc, err := grpc.NewClient(backend, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{cc: cc, faults: faults, routes: map[string]*grpc.ClientConn{}}
	for prefix, addr := range faults.Route {
		rc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		p.routes[prefix] = rc
		t.Cleanup(func() { rc.Close() })
	}
	handle := p.handle
	if faults.OnEnd != nil {
		handle = func(srv any, ss grpc.ServerStream) error {
			err := p.handle(srv, ss)
			method, _ := grpc.MethodFromServerStream(ss)
			faults.OnEnd(method, status.Code(err))
			return err
		}
	}
	opts := []grpc.ServerOption{grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(handle)}
	if faults.MaxRecvMsgSize > 0 {
		opts = append(opts, grpc.MaxRecvMsgSize(faults.MaxRecvMsgSize))
	}
	s := grpc.NewServer(opts...)
	go s.Serve(l)
	t.Cleanup(func() { s.Stop(); cc.Close() })
	return l.Addr().String()
}

type proxy struct {
	cc     *grpc.ClientConn
	faults ProxyFaults
	routes map[string]*grpc.ClientConn
	pages  atomic.Int64
	failed atomic.Int64
	lost   atomic.Int64 // batch calls that lost blobs
	cut    atomic.Bool
}

// conn is where a method goes.
func (p *proxy) conn(method string) *grpc.ClientConn {
	for prefix, cc := range p.routes {
		if strings.HasPrefix(method, prefix) {
			return cc
		}
	}
	return p.cc
}

func (p *proxy) handle(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	if p.faults.OnCall != nil {
		p.faults.OnCall(method)
	}
	if takeOne(p.faults.Unavailable) {
		return status.Error(codes.Unavailable, "down (test proxy)")
	}
	if p.faults.Hang != nil && p.faults.Hang.Load() {
		<-ss.Context().Done()
		return ss.Context().Err()
	}
	switch {
	case method == "/build.bazel.remote.execution.v2.ContentAddressableStorage/GetTree" && p.faults.Tree != "":
		return p.lyingTree(ss)
	case method == "/google.bytestream.ByteStream/Read" && (p.faults.Read == "empty" || p.faults.Read == "trickle" || p.faults.Read == "bomb"):
		return p.lyingRead(ss)
	case method == "/google.bytestream.ByteStream/Write" && p.faults.StallWrite:
		var msg []byte
		ss.RecvMsg(&msg)
		<-ss.Context().Done()
		return ss.Context().Err()
	}
	md, _ := metadata.FromIncomingContext(ss.Context())
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ss.Context(), md))
	defer cancel()
	cs, err := p.conn(method).NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return err
	}
	firstc := make(chan []byte, 1) // the first request, for answers that depend on it
	lose := p.loses(method)
	errc := make(chan error, 1)
	cutting := method == "/google.bytestream.ByteStream/Write" && p.faults.CutWrite > 0
	go func() {
		var carried int64
		for n := 0; ; n++ {
			var msg []byte
			if err := ss.RecvMsg(&msg); err != nil {
				if errors.Is(err, io.EOF) {
					errc <- cs.CloseSend()
				} else {
					errc <- err
				}
				return
			}
			if n == 0 {
				firstc <- msg
				if err := p.refuse(method, msg); err != nil {
					errc <- err
					cancel()
					return
				}
				if lose && method == batchUpdateMethod {
					var q repb.BatchUpdateBlobsRequest
					msg = withoutLost(p, msg, &q, &q.Requests)
				}
			}
			carried += int64(len(msg))
			if cutting && carried > p.faults.CutWrite && p.cut.CompareAndSwap(false, true) {
				errc <- status.Error(codes.Unavailable, "the proxy cut the stream")
				cancel()
				return
			}
			if err := cs.SendMsg(&msg); err != nil {
				errc <- nil // the backend's status arrives through RecvMsg
				return
			}
		}
	}()
	var first []byte
	for n := 0; ; n++ {
		var msg []byte
		if err := cs.RecvMsg(&msg); err != nil {
			if ferr := <-errc; ferr != nil && status.Code(ferr) != codes.OK {
				return ferr
			}
			if errors.Is(err, io.EOF) {
				if method == "/google.bytestream.ByteStream/Read" && p.faults.Read == "extra" {
					out, _ := proto.Marshal(&bsgrpc.ReadResponse{Data: []byte{'!'}})
					return ss.SendMsg(&out)
				}
				return nil
			}
			return err
		}
		if n == 0 {
			first = <-firstc
			if h, err := cs.Header(); err == nil {
				ss.SendHeader(h)
			}
		}
		msg = p.alter(method, first, msg, n)
		if lose {
			msg = p.unanswer(method, first, msg)
		}
		if err := ss.SendMsg(&msg); err != nil {
			return err
		}
	}
}

// takeOne takes 1 from n if it holds more than 0 and says whether it did.
func takeOne(n *atomic.Int64) bool {
	for n != nil {
		v := n.Load()
		if v <= 0 {
			return false
		}
		if n.CompareAndSwap(v, v-1) {
			return true
		}
	}
	return false
}

// refuse answers reads of hidden blobs with NOT_FOUND, and the first
// lookups with UNAVAILABLE when asked to.
func (p *proxy) refuse(method string, req []byte) error {
	if method == "/build.bazel.remote.asset.v1.Fetch/FetchDirectory" && p.faults.UnavailableFetches > 0 {
		var r assetpb.FetchDirectoryRequest
		if proto.Unmarshal(req, &r) == nil && len(r.GetUris()) > 0 && p.failed.Add(1) <= p.faults.UnavailableFetches {
			return status.Error(codes.Unavailable, "restarting (test proxy)")
		}
	}
	if method != "/google.bytestream.ByteStream/Read" {
		return nil
	}
	var r bsgrpc.ReadRequest
	if proto.Unmarshal(req, &r) == nil {
		for h := range p.faults.Hide {
			if strings.Contains(r.GetResourceName(), h) {
				return status.Error(codes.NotFound, "hidden by the test proxy")
			}
		}
	}
	return nil
}

// loses says whether this call is a batch call that loses the blobs
// named in Unanswered.
func (p *proxy) loses(method string) bool {
	if len(p.faults.Unanswered) == 0 || method != batchUpdateMethod && method != batchReadMethod {
		return false
	}
	return p.faults.UnansweredCalls <= 0 || p.lost.Add(1) <= p.faults.UnansweredCalls
}

const (
	batchUpdateMethod = "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs"
	batchReadMethod   = "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs"
)

// withoutLost is msg, decoded into m, without the entries of *entries
// (a list in m) for the blobs batch calls lose.
func withoutLost[E interface{ GetDigest() *repb.Digest }](p *proxy, msg []byte, m proto.Message, entries *[]E) []byte {
	if proto.Unmarshal(msg, m) != nil {
		return msg
	}
	*entries = slices.DeleteFunc(*entries, func(e E) bool { return p.faults.Unanswered[e.GetDigest().GetHash()] })
	out, _ := proto.Marshal(m)
	return out
}

// unanswer makes a batch answer say nothing true of the blobs lost: a
// read's answer leaves them out, an update's stands for them as Answer
// says.
func (p *proxy) unanswer(method string, req, resp []byte) []byte {
	if method == batchReadMethod {
		var r repb.BatchReadBlobsResponse
		return withoutLost(p, resp, &r, &r.Responses)
	}
	var q repb.BatchUpdateBlobsRequest
	var r repb.BatchUpdateBlobsResponse
	if proto.Unmarshal(req, &q) != nil || proto.Unmarshal(resp, &r) != nil {
		return resp
	}
	for _, e := range q.GetRequests() {
		h := e.GetDigest().GetHash()
		if !p.faults.Unanswered[h] {
			continue
		}
		switch p.faults.Answer {
		case "twice":
			if len(r.Responses) > 0 {
				r.Responses = append(r.Responses, proto.Clone(r.Responses[0]).(*repb.BatchUpdateBlobsResponse_Response))
			}
		case "other":
			other := sha256.Sum256([]byte(h))
			r.Responses = append(r.Responses, &repb.BatchUpdateBlobsResponse_Response{
				Digest: &repb.Digest{Hash: hex.EncodeToString(other[:]), SizeBytes: e.GetDigest().GetSizeBytes()}, Status: &spb.Status{},
			})
		}
	}
	out, _ := proto.Marshal(&r)
	return out
}

// alter applies the faults to one response.
func (p *proxy) alter(method string, req, resp []byte, n int) []byte {
	switch method {
	case "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs":
		var q repb.FindMissingBlobsRequest
		var r repb.FindMissingBlobsResponse
		if proto.Unmarshal(req, &q) != nil || proto.Unmarshal(resp, &r) != nil {
			return resp
		}
		for _, d := range q.GetBlobDigests() {
			if p.faults.Hide[d.GetHash()] {
				r.MissingBlobDigests = append(r.MissingBlobDigests, d)
			}
		}
		if p.faults.MissingLies {
			unasked := sha256.Sum256(req)
			r.MissingBlobDigests = append(append(r.MissingBlobDigests, r.MissingBlobDigests...),
				&repb.Digest{Hash: hex.EncodeToString(unasked[:]), SizeBytes: 1})
		}
		out, _ := proto.Marshal(&r)
		return out
	case "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs":
		var r repb.BatchReadBlobsResponse
		if proto.Unmarshal(resp, &r) != nil {
			return resp
		}
		for _, b := range r.GetResponses() {
			switch h := b.GetDigest().GetHash(); {
			case p.faults.Hide[h]:
				b.Data, b.Status = nil, &spb.Status{Code: int32(codes.NotFound)}
			case p.faults.Corrupt[h] && len(b.Data) > 0:
				b.Data = append([]byte(nil), b.Data...)
				b.Data[0] ^= 0xff
			}
		}
		if p.faults.BatchExtra != nil {
			extra := sha256.Sum256(p.faults.BatchExtra)
			r.Responses = append(r.Responses, &repb.BatchReadBlobsResponse_Response{
				Digest: &repb.Digest{Hash: hex.EncodeToString(extra[:]), SizeBytes: int64(len(p.faults.BatchExtra))},
				Data:   p.faults.BatchExtra, Status: &spb.Status{},
			})
		}
		out, _ := proto.Marshal(&r)
		return out
	case "/google.bytestream.ByteStream/Read":
		var q bsgrpc.ReadRequest
		var r bsgrpc.ReadResponse
		if n != 0 || proto.Unmarshal(req, &q) != nil || proto.Unmarshal(resp, &r) != nil {
			return resp
		}
		for h := range p.faults.Corrupt {
			if strings.Contains(q.GetResourceName(), h) && len(r.Data) > 0 {
				r.Data[0] ^= 0xff
			}
		}
		out, _ := proto.Marshal(&r)
		return out
	}
	return resp
}

// lyingTree answers each GetTree call with one page as p.faults.Tree
// says: the client asks for the next page for ever, unless it notices.
func (p *proxy) lyingTree(ss grpc.ServerStream) error {
	var req []byte
	if err := ss.RecvMsg(&req); err != nil {
		return err
	}
	resp := &repb.GetTreeResponse{NextPageToken: "again", Directories: []*repb.Directory{{}}}
	if p.faults.Tree == "empty" {
		resp = &repb.GetTreeResponse{NextPageToken: fmt.Sprintf("page-%d", p.pages.Add(1))}
	}
	out, _ := proto.Marshal(resp)
	return ss.SendMsg(&out)
}

// lyingRead answers a ByteStream Read with empty messages or two bytes a
// second until the client goes away.
func (p *proxy) lyingRead(ss grpc.ServerStream) error {
	var req []byte
	if err := ss.RecvMsg(&req); err != nil {
		return err
	}
	if p.faults.Read == "bomb" {
		out, _ := proto.Marshal(&bsgrpc.ReadResponse{Data: zstdBomb()})
		return ss.SendMsg(&out)
	}
	msg := &bsgrpc.ReadResponse{}
	interval := 10 * time.Millisecond
	if p.faults.Read == "trickle" {
		msg.Data, interval = []byte{0}, 500*time.Millisecond
	}
	out, _ := proto.Marshal(msg)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := ss.SendMsg(&out); err != nil {
			return err
		}
		select {
		case <-ss.Context().Done():
			return ss.Context().Err()
		case <-t.C:
		}
	}
}

// zstdBomb is one zstd frame of 256 MiB of zeros, made once: under the
// race detector making it takes longer than a client's stall window.
var zstdBomb = sync.OnceValue(func() []byte {
	var b bytes.Buffer
	w := zstdwire.NewWriter(&b)
	zeros := make([]byte, 1<<20)
	for range 256 {
		w.Write(zeros)
	}
	w.Close()
	return b.Bytes()
})
