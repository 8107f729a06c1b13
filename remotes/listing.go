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

// WalkRefs hands fn, in name order, the refs of kinds ("bst1-artifact",
// "bst2-artifact", "source") under prefix that a bst-cache serve holds,
// each page as it arrives, the next already asked for: the listings of the
// kinds are merged, a name held in two coming once for each, in the order of kinds.
// Pages must advance (a token at or before the last one is an error) and
// each listing is bounded. An error fn returns ends the walk.
func (r *Remote) WalkRefs(ctx context.Context, kinds []string, prefix string, fn func(ListedRef) error) error {
	ctx, cancel := context.WithCancel(ctx)
	pagers := make([]*refPager, len(kinds))
	for i, k := range kinds {
		pagers[i] = &refPager{r: r, client: lspb.NewRefListingClient(r.cc), kind: k, prefix: prefix}
	}
	defer func() {
		// A page asked for and not wanted is not waited for.
		cancel()
		for _, p := range pagers {
			p.wait()
		}
	}()
	for {
		var first *refPager
		for _, p := range pagers {
			if err := p.fill(ctx); err != nil {
				return err
			}
			if len(p.page) > 0 && (first == nil || p.page[0].Name < first.page[0].Name) {
				first = p
			}
		}
		if first == nil {
			return nil
		}
		ref := first.page[0]
		first.page = first.page[1:]
		if err := fn(ref); err != nil {
			return err
		}
	}
}

// refPager follows the pages of one kind's listing.
type refPager struct {
	r            *Remote
	client       lspb.RefListingClient
	kind, prefix string
	token        string
	page         []ListedRef
	listed       int
	done         bool
	// ahead brings the page after token, asked for as soon as token came
	// (the server finds it while the last page is handed out).
	ahead chan pageAnswer
}

// pageAnswer is the server's answer to one ListRefs.
type pageAnswer struct {
	resp *lspb.ListRefsResponse
	err  error
}

// ask asks for the page after token, in the background.
func (p *refPager) ask(ctx context.Context) {
	ahead := make(chan pageAnswer, 1)
	p.ahead = ahead
	req := &lspb.ListRefsRequest{InstanceName: p.r.instance, Kind: p.kind, Prefix: p.prefix, PageToken: p.token}
	go func() {
		var a pageAnswer
		a.err = p.r.call(ctx, "ListRefs", true, func(ctx context.Context) (err error) {
			a.resp, err = p.client.ListRefs(ctx, req)
			return err
		})
		ahead <- a
	}()
}

// wait waits for the page asked for, if any, and drops it.
func (p *refPager) wait() {
	if p.ahead != nil {
		<-p.ahead
		p.ahead = nil
	}
}

// fill asks for the next page once the last is used up.
func (p *refPager) fill(ctx context.Context) error {
	for len(p.page) == 0 && !p.done {
		if p.ahead == nil {
			p.ask(ctx)
		}
		a := <-p.ahead
		p.ahead = nil
		resp, err := a.resp, a.err
		var re *Error
		if errors.As(err, &re) && re.Code == codes.Unimplemented {
			return fmt.Errorf("cache %s (%s): %w", p.r.name, p.r.url, ErrCannotList)
		}
		if err != nil {
			return err
		}
		for _, ref := range resp.GetRefs() {
			p.page = append(p.page, ListedRef{Name: ref.GetName(), Digest: ref.GetDigest(), Modified: time.Unix(ref.GetModified(), 0).UTC()})
		}
		p.listed += len(resp.GetRefs())
		next := resp.GetNextPageToken()
		switch {
		case next == "":
			p.done = true
		case next <= p.token || len(resp.GetRefs()) == 0:
			return p.r.wrap("ListRefs", fmt.Errorf("the server's page token does not advance (%q after %q)", next, p.token))
		case p.listed > maxListed:
			return p.r.wrap("ListRefs", fmt.Errorf("more than %d refs", maxListed))
		}
		p.token = next
		if !p.done {
			p.ask(ctx)
		}
	}
	return nil
}
