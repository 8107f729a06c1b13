// Command casload measures the per-request speed of REAPI CAS servers
// side by side (scripts/bench-cas starts serve and bazel-remote and runs
// it): one load client, the same blobs and the same calls against each
// target, runs alternating between targets, medians of -runs.
//
//	casload -target serve=127.0.0.1:1234 -target bazel-remote=127.0.0.1:5678
//
// Each run uploads a fresh set of random blobs (-small x -small-size by
// BatchUpdateBlobs, -large x -large-size by ByteStream Write), then
// measures on that set: FindMissingBlobs of present and of absent digests,
// BatchReadBlobs of present and of missing blobs, and whole-blob
// ByteStream reads, identity and compressed-blobs/zstd. Every byte read is
// checked against its digest, so a target that served wrong data fails
// the run rather than winning it. It prints, per phase, each target's
// median rate and the ratio of the first target to the second beside the
// target ratio (>= 1.0x).
//
// With -loose D it measures nothing: for D it is one client writing blobs
// that no ref will ever name (scripts/bench-load runs 16 of them against
// serve --quota), each a fresh random blob of 4 KiB to -large-size bytes,
// asked about with FindMissingBlobs and then uploaded as the REAPI
// clients do (BatchUpdateBlobs up to 256 KiB, ByteStream Write above),
// one after the other, and prints what went in and what was refused.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"
	bsgrpc "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

type targets []target

type target struct{ name, addr string }

func (t *targets) String() string { return fmt.Sprint(*t) }
func (t *targets) Set(v string) error {
	name, addr, ok := strings.Cut(v, "=")
	if !ok {
		return fmt.Errorf("want NAME=HOST:PORT, got %q", v)
	}
	*t = append(*t, target{name, addr})
	return nil
}

type config struct {
	small, smallSize, large, largeSize int
	workers, runs                      int
	findBatch, readBatch, calls        int
	only                               string
	loose                              time.Duration
}

func main() {
	var ts targets
	var c config
	flag.Var(&ts, "target", "NAME=HOST:PORT of a CAS server (repeat; the ratio is the first over the second)")
	flag.IntVar(&c.small, "small", 2000, "small blobs per run")
	flag.IntVar(&c.smallSize, "small-size", 16<<10, "bytes per small blob")
	flag.IntVar(&c.large, "large", 40, "large blobs per run")
	flag.IntVar(&c.largeSize, "large-size", 4<<20, "bytes per large blob")
	flag.IntVar(&c.workers, "workers", 8, "concurrent calls")
	flag.IntVar(&c.runs, "runs", 3, "runs per target (the median is printed)")
	flag.IntVar(&c.findBatch, "find-batch", 1000, "digests per FindMissingBlobs call")
	flag.IntVar(&c.readBatch, "read-batch", 100, "digests per BatchReadBlobs call")
	flag.IntVar(&c.calls, "calls", 2000, "FindMissingBlobs and missing-blob BatchReadBlobs calls per phase")
	flag.StringVar(&c.only, "only", "", "measure only the phases whose names contain this (the upload always runs), for profiling")
	flag.DurationVar(&c.loose, "loose", 0, "measure nothing: for this long, upload blobs no ref names to the one -target, as one client")
	flag.Parse()
	if len(ts) == 0 || c.loose > 0 && len(ts) != 1 {
		fmt.Fprintln(os.Stderr, "casload: no -target, or -loose with more than one")
		os.Exit(2)
	}
	do := run
	if c.loose > 0 {
		do = writeLoose
	}
	if err := do(ts, c); err != nil {
		fmt.Fprintln(os.Stderr, "casload:", err)
		os.Exit(1)
	}
}

// phase is one measured step: it returns how many units (calls or bytes)
// it did.
type phase struct {
	name, unit string
	do         func(cl *client, ctx context.Context, set *blobSet) (float64, error)
}

var phases = []phase{
	{"upload (batch + ByteStream)", "MB/s", (*client).upload},
	{"FindMissingBlobs, present", "calls/s", func(cl *client, ctx context.Context, set *blobSet) (float64, error) {
		return cl.findMissing(ctx, set.digests, 0)
	}},
	{"FindMissingBlobs, absent", "calls/s", func(cl *client, ctx context.Context, set *blobSet) (float64, error) {
		return cl.findMissing(ctx, set.absent, len(set.absent))
	}},
	{"BatchReadBlobs, present", "MB/s", (*client).batchReadPresent},
	{"BatchReadBlobs, missing", "calls/s", (*client).batchReadMissing},
	{"ByteStream read, identity", "MB/s", func(cl *client, ctx context.Context, set *blobSet) (float64, error) {
		return cl.byteStreamRead(ctx, set, false)
	}},
	{"ByteStream read, zstd", "MB/s", func(cl *client, ctx context.Context, set *blobSet) (float64, error) {
		return cl.byteStreamRead(ctx, set, true)
	}},
}

// dial connects a client to t: one connection, as a REAPI client keeps.
func dial(t target, c config) (*client, func() error, error) {
	conn, err := grpc.NewClient(t.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		return nil, nil, err
	}
	return &client{cas: repb.NewContentAddressableStorageClient(conn), bs: bsgrpc.NewByteStreamClient(conn), c: c}, conn.Close, nil
}

func run(ts targets, c config) error {
	ctx := context.Background()
	clients := make([]*client, len(ts))
	for i, t := range ts {
		cl, closeConn, err := dial(t, c)
		if err != nil {
			return err
		}
		defer closeConn()
		clients[i] = cl
	}
	// rates[phase][target] over runs
	rates := make([][][]float64, len(phases))
	for i := range rates {
		rates[i] = make([][]float64, len(ts))
	}
	for r := range c.runs {
		order := make([]int, len(ts))
		for i := range order {
			order[i] = (i + r) % len(ts) // alternate who goes first
		}
		for _, ti := range order {
			// Each target gets the same fresh blobs in a run; runs differ.
			set := newBlobSet(c, uint64(r))
			for pi, p := range phases {
				if pi > 0 && !strings.Contains(p.name, c.only) {
					rates[pi][ti] = append(rates[pi][ti], 0)
					continue
				}
				start := time.Now()
				units, err := p.do(clients[ti], ctx, set)
				if err != nil {
					return fmt.Errorf("%s, run %d, %s: %w", ts[ti].name, r+1, p.name, err)
				}
				rate := units / time.Since(start).Seconds()
				if p.unit == "MB/s" {
					rate /= 1e6
				}
				rates[pi][ti] = append(rates[pi][ti], rate)
			}
			fmt.Fprintf(os.Stderr, "casload: run %d of %d against %s done\n", r+1, c.runs, ts[ti].name)
		}
	}
	fmt.Printf("%d x %d B + %d x %d B blobs, %d workers, FindMissingBlobs of %d digests, BatchReadBlobs of %d, median of %d runs\n",
		c.small, c.smallSize, c.large, c.largeSize, c.workers, c.findBatch, c.readBatch, c.runs)
	fmt.Printf("%-30s", "phase")
	for _, t := range ts {
		fmt.Printf(" %16s", t.name)
	}
	if len(ts) > 1 {
		fmt.Printf(" %9s %7s", "ratio", "target")
	}
	fmt.Println()
	for pi, p := range phases {
		fmt.Printf("%-30s", p.name)
		meds := make([]float64, len(ts))
		for ti := range ts {
			meds[ti] = median(rates[pi][ti])
			fmt.Printf(" %8.1f %-7s", meds[ti], p.unit)
		}
		if len(ts) > 1 {
			ratio := meds[0] / meds[1]
			met := "met"
			if ratio < 1 {
				met = "MISSED"
			}
			fmt.Printf(" %8.2fx %7s %s", ratio, ">=1.0x", met)
		}
		fmt.Println()
	}
	return nil
}

// writeLoose is -loose: one client uploading blobs no ref names until
// c.loose has passed, then one line on stdout: "loose: N blobs, B bytes,
// R refused, F failed" (refused: RESOURCE_EXHAUSTED, the server is full).
// A failed upload is logged on stderr and the client goes on.
func writeLoose(ts targets, c config) error {
	cl, closeConn, err := dial(ts[0], c)
	if err != nil {
		return err
	}
	defer closeConn()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
	var blobs, bytes, refused, failed int64
	for end := time.Now().Add(c.loose); time.Now().Before(end); {
		b := make([]byte, 4<<10+rng.IntN(max(c.largeSize-4<<10, 1)))
		for i := 0; i+8 <= len(b); i += 8 {
			v := rng.Uint64()
			for k := range 8 {
				b[i+k] = byte(v >> (8 * k))
			}
		}
		err := cl.uploadOne(ctx, b)
		switch {
		case err == nil:
			blobs++
			bytes += int64(len(b))
		case status.Code(err) == codes.ResourceExhausted:
			refused++
		default:
			failed++
			fmt.Fprintln(os.Stderr, "casload: loose upload:", err)
			time.Sleep(100 * time.Millisecond)
		}
	}
	fmt.Printf("loose: %d blobs, %d bytes, %d refused, %d failed\n", blobs, bytes, refused, failed)
	return nil
}

// uploadOne asks whether the server lacks b and uploads it if it does.
func (cl *client) uploadOne(ctx context.Context, b []byte) error {
	d := digestOf(b)
	resp, err := cl.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{d}})
	if err != nil || len(resp.GetMissingBlobDigests()) == 0 {
		return err
	}
	if len(b) > 256<<10 {
		return cl.write(ctx, b)
	}
	up, err := cl.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: d, Data: b}}})
	if err != nil {
		return err
	}
	for _, r := range up.GetResponses() {
		if r.GetStatus().GetCode() != 0 {
			return status.ErrorProto(r.GetStatus())
		}
	}
	return nil
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// blobSet is one run's blobs: small ones (batches) and large ones
// (ByteStream), and as many digests of blobs no one stored.
type blobSet struct {
	small, large [][]byte
	digests      []*repb.Digest // of small then large
	absent       []*repb.Digest
}

func newBlobSet(c config, seed uint64) *blobSet {
	rng := rand.New(rand.NewPCG(seed, 21))
	blob := func(n int) []byte {
		b := make([]byte, n)
		for i := 0; i+8 <= n; i += 8 {
			v := rng.Uint64()
			for k := range 8 {
				b[i+k] = byte(v >> (8 * k))
			}
		}
		return b
	}
	s := &blobSet{}
	for range c.small {
		s.small = append(s.small, blob(c.smallSize))
	}
	for range c.large {
		s.large = append(s.large, blob(c.largeSize))
	}
	for _, b := range append(slices.Clone(s.small), s.large...) {
		s.digests = append(s.digests, digestOf(b))
		absent := digestOf(append(slices.Clone(b[:min(len(b), 64)]), "absent"...))
		s.absent = append(s.absent, absent)
	}
	return s
}

func digestOf(b []byte) *repb.Digest {
	h := sha256.Sum256(b)
	return &repb.Digest{Hash: hex.EncodeToString(h[:]), SizeBytes: int64(len(b))}
}

type client struct {
	cas repb.ContentAddressableStorageClient
	bs  bsgrpc.ByteStreamClient
	c   config
}

// parallel runs fn(i) for i in [0, n) on the client's workers; the first
// error stops the rest.
func (cl *client) parallel(n int, fn func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, cl.c.workers)
	for range cl.c.workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					errs <- err
					next.Store(int64(n))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// chunks splits [0, n) into runs of at most k.
func chunks(n, k int) [][2]int {
	var out [][2]int
	for i := 0; i < n; i += k {
		out = append(out, [2]int{i, min(n, i+k)})
	}
	return out
}

func (cl *client) upload(ctx context.Context, set *blobSet) (float64, error) {
	batches := chunks(len(set.small), cl.c.readBatch)
	var bytes atomic.Int64
	err := cl.parallel(len(batches)+len(set.large), func(i int) error {
		if i >= len(batches) {
			b := set.large[i-len(batches)]
			bytes.Add(int64(len(b)))
			return cl.write(ctx, b)
		}
		req := &repb.BatchUpdateBlobsRequest{}
		for _, b := range set.small[batches[i][0]:batches[i][1]] {
			req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(b), Data: b})
			bytes.Add(int64(len(b)))
		}
		resp, err := cl.cas.BatchUpdateBlobs(ctx, req)
		if err != nil {
			return err
		}
		for _, r := range resp.GetResponses() {
			if r.GetStatus().GetCode() != 0 {
				return fmt.Errorf("BatchUpdateBlobs %s: %s", r.GetDigest().GetHash(), r.GetStatus().GetMessage())
			}
		}
		return nil
	})
	return float64(bytes.Load()), err
}

func (cl *client) write(ctx context.Context, b []byte) error {
	d := digestOf(b)
	w, err := cl.bs.Write(ctx)
	if err != nil {
		return err
	}
	name := fmt.Sprintf("uploads/%s/blobs/%s/%d", uuid.NewString(), d.Hash, d.SizeBytes)
	for off := 0; off < len(b) || off == 0; {
		end := min(len(b), off+1<<20)
		req := &bsgrpc.WriteRequest{WriteOffset: int64(off), Data: b[off:end], FinishWrite: end == len(b)}
		if off == 0 {
			req.ResourceName = name
		}
		if err := w.Send(req); err != nil {
			break // the status comes with CloseAndRecv
		}
		off = end
		if end == len(b) {
			break
		}
	}
	_, err = w.CloseAndRecv()
	return err
}

// findMissing makes -calls FindMissingBlobs calls over ds and checks that
// each reports want missing digests per call (0 or all).
func (cl *client) findMissing(ctx context.Context, ds []*repb.Digest, wantAll int) (float64, error) {
	k := min(cl.c.findBatch, len(ds))
	err := cl.parallel(cl.c.calls, func(i int) error {
		from := (i * k) % len(ds)
		req := &repb.FindMissingBlobsRequest{}
		for j := range k {
			req.BlobDigests = append(req.BlobDigests, ds[(from+j)%len(ds)])
		}
		resp, err := cl.cas.FindMissingBlobs(ctx, req)
		if err != nil {
			return err
		}
		want := 0
		if wantAll > 0 {
			want = k
		}
		if got := len(resp.GetMissingBlobDigests()); got != want {
			return fmt.Errorf("FindMissingBlobs: %d of %d missing, want %d", got, k, want)
		}
		return nil
	})
	return float64(cl.c.calls), err
}

func (cl *client) batchReadPresent(ctx context.Context, set *blobSet) (float64, error) {
	batches := chunks(len(set.small), cl.c.readBatch)
	var n atomic.Int64
	err := cl.parallel(len(batches), func(i int) error {
		req := &repb.BatchReadBlobsRequest{Digests: set.digests[batches[i][0]:batches[i][1]]}
		resp, err := cl.cas.BatchReadBlobs(ctx, req)
		if err != nil {
			return err
		}
		for _, r := range resp.GetResponses() {
			if r.GetStatus().GetCode() != 0 {
				return fmt.Errorf("BatchReadBlobs %s: %s", r.GetDigest().GetHash(), r.GetStatus().GetMessage())
			}
			if err := check(r.GetDigest(), r.GetData()); err != nil {
				return err
			}
			n.Add(int64(len(r.GetData())))
		}
		return nil
	})
	return float64(n.Load()), err
}

func (cl *client) batchReadMissing(ctx context.Context, set *blobSet) (float64, error) {
	k := min(cl.c.readBatch, len(set.absent))
	err := cl.parallel(cl.c.calls, func(i int) error {
		from := (i * k) % len(set.absent)
		req := &repb.BatchReadBlobsRequest{}
		for j := range k {
			req.Digests = append(req.Digests, set.absent[(from+j)%len(set.absent)])
		}
		resp, err := cl.cas.BatchReadBlobs(ctx, req)
		if err != nil {
			return err
		}
		for _, r := range resp.GetResponses() {
			if codes.Code(r.GetStatus().GetCode()) != codes.NotFound {
				return fmt.Errorf("BatchReadBlobs of absent %s: status %v", r.GetDigest().GetHash(), r.GetStatus())
			}
		}
		return nil
	})
	return float64(cl.c.calls), err
}

var decoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		panic(err)
	}
	return d
}}

// byteStreamRead reads every blob of the set whole, identity or zstd.
func (cl *client) byteStreamRead(ctx context.Context, set *blobSet, compressed bool) (float64, error) {
	var n atomic.Int64
	err := cl.parallel(len(set.digests), func(i int) error {
		d := set.digests[i]
		kind := "blobs"
		if compressed {
			kind = "compressed-blobs/zstd"
		}
		stream, err := cl.bs.Read(ctx, &bsgrpc.ReadRequest{ResourceName: fmt.Sprintf("%s/%s/%d", kind, d.Hash, d.SizeBytes)})
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		for {
			resp, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("reading %s: %w", d.Hash, err)
			}
			buf.Write(resp.GetData())
		}
		data := buf.Bytes()
		if compressed {
			dec := decoders.Get().(*zstd.Decoder)
			data, err = dec.DecodeAll(data, make([]byte, 0, d.SizeBytes))
			decoders.Put(dec)
			if err != nil {
				return fmt.Errorf("inflating %s: %w", d.Hash, err)
			}
		}
		n.Add(int64(len(data)))
		return check(d, data)
	})
	return float64(n.Load()), err
}

func check(d *repb.Digest, data []byte) error {
	if got := digestOf(data); got.Hash != d.Hash || got.SizeBytes != d.SizeBytes {
		return fmt.Errorf("blob %s/%d: got %s/%d", d.Hash, d.SizeBytes, got.Hash, got.SizeBytes)
	}
	return nil
}
