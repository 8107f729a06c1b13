// Command lookups measures what one lookup costs a bst-cache serve, for
// scripts/bench-scale: it asks for refs (BuildStream 1 refs, one per line
// in a file) one call at a time, by ReferenceStorage GetReference and by
// Remote Asset FetchDirectory, and asks FindMissingBlobs for the root
// Directories they name, 100 digests a call (as many calls as for the
// others); then prints each call's median and 99th percentile latency in
// microseconds:
//
//	lookups -addr 127.0.0.1:PORT -n 2000 REFS
//	GetReference 180 420
//	FetchDirectory 190 450
//	FindMissingBlobs 900 2100
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"time"

	assetpb "github.com/bazelbuild/remote-apis/build/bazel/remote/asset/v1"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bst-cache/bst-cache/buildstream"
	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

func main() {
	addr := flag.String("addr", "", "the serve to ask (HOST:PORT, plaintext)")
	n := flag.Int("n", 2000, "lookups of each kind (refs are taken in turn)")
	flag.Parse()
	if *addr == "" || flag.NArg() != 1 || *n < 1 {
		fmt.Fprintln(os.Stderr, "usage: lookups -addr HOST:PORT [-n N] REFS")
		os.Exit(2)
	}
	if err := run(*addr, flag.Arg(0), *n); err != nil {
		fmt.Fprintln(os.Stderr, "lookups:", err)
		os.Exit(1)
	}
}

func run(addr, refsFile string, n int) error {
	refs, err := readLines(refsFile)
	if err != nil {
		return err
	}
	if len(refs) == 0 {
		return fmt.Errorf("%s names no refs", refsFile)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx := context.Background()
	index, fetch, cas := bspb.NewReferenceStorageClient(cc), assetpb.NewFetchClient(cc), repb.NewContentAddressableStorageClient(cc)

	var roots []*repb.Digest
	getRef, err := timed(n, func(i int) error {
		resp, err := index.GetReference(ctx, &bspb.GetReferenceRequest{Key: refs[i%len(refs)]})
		if err == nil && len(roots) < n {
			roots = append(roots, resp.GetDigest())
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("GetReference: %w", err)
	}
	fetchDir, err := timed(n, func(i int) error {
		_, err := fetch.FetchDirectory(ctx, &assetpb.FetchDirectoryRequest{Uris: []string{buildstream.URNBst1Artifact + refs[i%len(refs)]}})
		return err
	})
	if err != nil {
		return fmt.Errorf("FetchDirectory: %w", err)
	}
	// n calls, as for the others, so that the median is of as many
	// samples (n/100 calls, 20, gave a median of first uses).
	const batch = 100
	missing, err := timed(n, func(i int) error {
		var ds []*repb.Digest
		for j := range batch {
			ds = append(ds, roots[(i*batch+j)%len(roots)])
		}
		_, err := cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: ds})
		return err
	})
	if err != nil {
		return fmt.Errorf("FindMissingBlobs: %w", err)
	}
	for _, r := range []struct {
		name string
		ts   []time.Duration
	}{{"GetReference", getRef}, {"FetchDirectory", fetchDir}, {"FindMissingBlobs", missing}} {
		fmt.Printf("%s %d %d\n", r.name, percentile(r.ts, 50).Microseconds(), percentile(r.ts, 99).Microseconds())
	}
	return nil
}

// timed runs call n times in turn and returns how long each took.
func timed(n int, call func(i int) error) ([]time.Duration, error) {
	ts := make([]time.Duration, n)
	for i := range n {
		start := time.Now()
		if err := call(i); err != nil {
			return nil, err
		}
		ts[i] = time.Since(start)
	}
	return ts, nil
}

func percentile(ts []time.Duration, p int) time.Duration {
	s := slices.Clone(ts)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if sc.Text() != "" {
			out = append(out, sc.Text())
		}
	}
	return out, sc.Err()
}
