package server_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
	lspb "github.com/bst-cache/bst-cache/protos/bstcache/v1"
	"github.com/bst-cache/bst-cache/server"
)

// The listing service pages in name order, each page after the last name
// of the one before, and filters by prefix.
func TestListRefsPages(t *testing.T) {
	addr, store, _ := startServer(t, server.Options{AllowWrites: true})
	for _, ref := range []string{"a/x/1", "a/y/1", "b/x/1", "b/x/2", "b/xy/1"} {
		if err := store.SetRef(cache.KindBst1Artifact, ref, buildstream.V1RefContent(digest.Empty)); err != nil {
			t.Fatal(err)
		}
	}
	c := connect(t, addr)
	client := lspb.NewRefListingClient(c.conn)
	var got []string
	token := ""
	for pages := 0; ; pages++ {
		resp, err := client.ListRefs(context.Background(), &lspb.ListRefsRequest{Kind: "bst1-artifact", PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetRefs() {
			got = append(got, r.GetName())
			if r.GetDigest() != digest.Empty.String() {
				t.Errorf("%s names %q", r.GetName(), r.GetDigest())
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			if pages != 2 {
				t.Errorf("%d pages of 2 for 5 refs", pages+1)
			}
			break
		}
	}
	if len(got) != 5 || got[0] != "a/x/1" || got[4] != "b/xy/1" {
		t.Errorf("pages gave %v", got)
	}
	resp, err := client.ListRefs(context.Background(), &lspb.ListRefsRequest{Kind: "bst1-artifact", Prefix: "b/x"})
	if err != nil || len(resp.GetRefs()) != 2 {
		t.Errorf("prefix b/x: %v %v; want b/x/1 and b/x/2, not b/xy/1", resp.GetRefs(), err)
	}
	if _, err := client.ListRefs(context.Background(), &lspb.ListRefsRequest{Kind: "everything"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("an unknown kind: %v", err)
	}
}

// listAll lists every bst1 ref through the listing service, pageSize at a
// time, checking that names ascend across pages.
func listAll(ctx context.Context, client lspb.RefListingClient, pageSize int32) ([]string, error) {
	var got []string
	token := ""
	for {
		resp, err := client.ListRefs(ctx, &lspb.ListRefsRequest{Kind: "bst1-artifact", PageSize: pageSize, PageToken: token})
		if err != nil {
			return got, err
		}
		for _, r := range resp.GetRefs() {
			if len(got) > 0 && r.GetName() <= got[len(got)-1] {
				return got, fmt.Errorf("%s listed after %s", r.GetName(), got[len(got)-1])
			}
			got = append(got, r.GetName())
		}
		next := resp.GetNextPageToken()
		switch {
		case next == "":
			return got, nil
		case next <= token || len(resp.GetRefs()) == 0:
			return got, fmt.Errorf("page token %q after %q", next, token)
		}
		token = next
	}
}

// A listing page costs its own size, not the store's: listing all of
// 20,000 refs a page of 100 at a time costs, per ref, about what listing
// 200 does. (Walking the whole store for each page, it cost a hundred
// times as much.) The bound is loose enough for a busy machine.
func TestListRefsPageCostsItsSize(t *testing.T) {
	list := func(n int, runs int, budget time.Duration) time.Duration {
		addr, store, _ := startServer(t, server.Options{})
		start := time.Now()
		want := testenv.WriteRefs(t, store, n/2)
		t.Logf("%d refs written in %v", n, time.Since(start))
		client := lspb.NewRefListingClient(connect(t, addr).conn)
		best := time.Duration(math.MaxInt64)
		for range runs {
			ctx, cancel := context.WithTimeout(context.Background(), budget)
			start := time.Now()
			got, err := listAll(ctx, client, 100)
			cancel()
			if err != nil {
				t.Fatalf("listing %d refs: %v (%v): pages walk the whole store", n, err, budget)
			}
			best = min(best, time.Since(start))
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("listing of %d refs (-want +got):\n%s", n, diff)
			}
		}
		t.Logf("%d refs listed in %v", n, best)
		return best
	}
	small := list(200, 5, time.Minute) / 200
	const big = 20_000
	list(big, 1, 15*big*small+10*time.Second)
}

// Pages never repeat or skip a ref that stays while others are written
// and removed between (and during) pages, whether a page goes on with its
// listing's kept walk or walks again from its token.
func TestListRefsPagesAcrossChanges(t *testing.T) {
	addr, store, _ := startServer(t, server.Options{})
	stay := testenv.WriteRefs(t, store, 1500)
	content := buildstream.V1RefContent(digest.Empty)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			// Beside the refs that stay, before and after them in their
			// directories, and in directories of their own.
			ref := fmt.Sprintf("bench/e%05d/%064x", (i*7919)%1500, 1<<40+i%50)
			if i%3 == 0 {
				ref = fmt.Sprintf("bench/e%05d-%d/x", (i*104729)%1500, i%5)
			}
			if i%2 == 0 {
				store.SetRef(cache.KindBst1Artifact, ref, content)
			} else {
				store.DeleteRef(cache.KindBst1Artifact, ref)
			}
		}
	})
	defer func() { cancel(); wg.Wait() }()
	client := lspb.NewRefListingClient(connect(t, addr).conn)
	for _, size := range []int32{37, 1000} {
		got, err := listAll(context.Background(), client, size)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, r := range got {
			seen[r] = true
		}
		for _, r := range stay {
			if !seen[r] {
				t.Fatalf("pages of %d: %s skipped", size, r)
			}
		}
	}
}
