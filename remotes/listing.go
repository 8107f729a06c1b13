package remotes

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"

	lspb "github.com/bst-cache/bst-cache/protos/bstcache/v1"
)

// ErrCannotList is wrapped when a cache has no listing service: only
// bst-cache serve can say what it holds.
var ErrCannotList = errors.New("this server cannot list its refs (only bst-cache serve can)")

// maxListed bounds the refs one listing may bring, whatever the server
// says.
const maxListed = 10_000_000

// ListedRef is one ref a cache holds.
type ListedRef struct {
	Name     string    `json:"ref"`
	Digest   string    `json:"digest"`
	Modified time.Time `json:"modified"`
}

// ListRefs asks a bst-cache serve for its refs of kind ("bst1-artifact",
// "bst2-artifact", "source") under prefix, following pages. Pages must
// advance (a token at or before the last one is an error) and the whole
// listing is bounded.
func (r *Remote) ListRefs(ctx context.Context, kind, prefix string) ([]ListedRef, error) {
	client := lspb.NewRefListingClient(r.cc)
	var out []ListedRef
	token := ""
	for {
		var resp *lspb.ListRefsResponse
		err := r.call(ctx, "ListRefs", true, func(ctx context.Context) (err error) {
			resp, err = client.ListRefs(ctx, &lspb.ListRefsRequest{InstanceName: r.instance, Kind: kind, Prefix: prefix, PageToken: token})
			return err
		})
		var re *Error
		if errors.As(err, &re) && re.Code == codes.Unimplemented {
			return nil, fmt.Errorf("cache %s (%s): %w", r.name, r.url, ErrCannotList)
		}
		if err != nil {
			return nil, err
		}
		for _, ref := range resp.GetRefs() {
			out = append(out, ListedRef{Name: ref.GetName(), Digest: ref.GetDigest(), Modified: time.Unix(ref.GetModified(), 0).UTC()})
		}
		next := resp.GetNextPageToken()
		switch {
		case next == "":
			return out, nil
		case next <= token || len(resp.GetRefs()) == 0:
			return nil, r.wrap("ListRefs", fmt.Errorf("the server's page token does not advance (%q after %q)", next, token))
		case len(out) > maxListed:
			return nil, r.wrap("ListRefs", fmt.Errorf("more than %d refs", maxListed))
		}
		token = next
	}
}
