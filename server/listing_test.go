package server_test

import (
	"context"
	"testing"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
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
