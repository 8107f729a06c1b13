package transfer

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"google.golang.org/grpc/codes"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/remotes"
)

// answers records how the index caches answered for one ref, so that a
// ref is called missing only when every cache that could hold it said it
// does not.
type answers struct {
	notFound []string // caches that answered: not here
	unasked  []string // caches that could not be asked, each with why
	// hint is set when a cache holds the ref in the other format.
	hint string
}

// complete says whether every index cache answered.
func (a *answers) complete() bool { return len(a.unasked) == 0 }

// reason says what was not found where and which caches could not be
// asked.
func (a *answers) reason() string {
	var parts []string
	if len(a.notFound) > 0 {
		parts = append(parts, "not in "+strings.Join(a.notFound, ", "))
	}
	if len(a.unasked) > 0 {
		parts = append(parts, "could not ask "+strings.Join(a.unasked, "; "))
	}
	if len(parts) == 0 {
		parts = append(parts, "no cache has an index for these refs (type \"index\" or \"all\")")
	}
	if a.hint != "" {
		parts = append(parts, a.hint)
	}
	return strings.Join(parts, "; ")
}

// missingOrFailed ends a ref no index cache resolved: missing when every
// cache answered, failed when one could not be asked.
func (a *answers) missingOrFailed(res Result) Result {
	res.Reason = a.reason()
	res.Status = StatusMissing
	if !a.complete() || len(a.notFound) == 0 {
		res.Status = StatusFailed
	}
	return res
}

// resolve asks the index caches for ref in priority order and calls hit
// for each digest one names (each digest once) until hit returns true. A
// cache that cannot be asked is recorded in the answers, warned about once
// and, when fatal, skipped for a while (Cache.connect). With Strict the first
// such error is returned.
func (e *Engine) resolve(ctx context.Context, ref string, hit func(c *Cache, d digest.Digest) (stop bool, err error)) (*answers, error) {
	a := &answers{}
	seen := map[digest.Digest]bool{}
	for _, c := range filter(e.Caches, hasIndex) {
		r, err := c.connect(ctx, e.Events)
		if err != nil {
			if e.Strict {
				return a, err
			}
			e.Events.info(fmt.Sprintf("%s: cache %s: not asked: skipped for now", ref, c.Name()))
			a.unasked = append(a.unasked, c.describe(err))
			continue
		}
		d, err := e.Kind.lookup(ctx, r, c.caps, ref)
		switch {
		case err == nil:
			c.asked(nil)
			e.Events.info(fmt.Sprintf("%s: cache %s: names %s", ref, c.Name(), d))
		case errors.Is(err, remotes.ErrNotFound):
			c.asked(nil)
			e.Events.info(fmt.Sprintf("%s: cache %s: miss", ref, c.Name()))
			a.notFound = append(a.notFound, c.Name())
			continue
		case errors.Is(err, errNoIndex):
			e.Events.info(fmt.Sprintf("%s: cache %s: no index for these refs", ref, c.Name()))
			if c.caps.ReferenceStorage && e.Kind != Bst1Artifact {
				a.hint = fmt.Sprintf("cache %s has only BuildStream 1's index (ReferenceStorage): set format = \"bst1\" or use --format bst1", c.Name())
			}
			continue
		case assetRefusal(err):
			// Buildbarn's bb_remote_asset answers a URI it would have to
			// fetch itself with PERMISSION_DENIED (no "error" fetcher)
			// or UNIMPLEMENTED: for us that is a miss.
			e.Events.info(fmt.Sprintf("%s: cache %s: refused the fetch: a miss", ref, c.Name()))
			c.refusedFetch(err, e.Events)
			a.notFound = append(a.notFound, c.Name())
			continue
		default:
			if ctx.Err() != nil {
				return a, ctx.Err()
			}
			c.asked(err)
			e.Events.info(fmt.Sprintf("%s: cache %s: error: %v", ref, c.Name(), err))
			if e.Strict {
				return a, err
			}
			if fatal(err) {
				c.kill(err, e.Events)
			} else {
				e.Events.Warn(ref + ": " + c.describe(err))
			}
			a.unasked = append(a.unasked, c.describe(err))
			continue
		}
		if seen[d] {
			continue
		}
		seen[d] = true
		stop, err := hit(c, d)
		if err != nil || stop {
			return a, err
		}
	}
	if len(a.notFound) > 0 && a.hint == "" && a.complete() {
		a.hint = e.otherFormatHint(ctx, ref)
	}
	return a, nil
}

// assetRefusal tells a Remote Asset fetch refused for this URI (after the
// probe showed the service) from a failure of the cache.
func assetRefusal(err error) bool {
	var re *remotes.Error
	if !errors.As(err, &re) || !strings.HasPrefix(re.Op, "Fetch") {
		return false
	}
	return re.Code == codes.Unimplemented || re.Code == codes.PermissionDenied
}

// otherFormatHint asks the caches for ref in the other artifact format;
// when one has it there, the hint says how to switch.
func (e *Engine) otherFormatHint(ctx context.Context, ref string) string {
	other, ok := e.Kind.other()
	if !ok {
		return ""
	}
	for _, c := range filter(e.Caches, hasIndex) {
		r, err := c.connect(ctx, e.Events)
		if err != nil {
			continue
		}
		if _, err := other.lookup(ctx, r, c.caps, ref); err == nil {
			return fmt.Sprintf("cache %s has it as a %s artifact: use --format %s (or format = %q)", c.Name(), other.format(), other.format(), other.format())
		}
	}
	return ""
}

// survey walks the closure of roots on storage caches without storing
// anything: Directories come from the local store when it has them, else
// from the first storage cache that does. all is every digest of the
// closure; missing those no storage cache has (a Directory no cache has
// hides its subtree). A storage cache that cannot be asked is an error
// only when some blob stays missing.
func (e *Engine) survey(ctx context.Context, storage []*Cache, roots cache.Roots) (all, missing []digest.Digest, err error) {
	var down error
	var live []remote
	for _, c := range storage {
		r, err := c.connect(ctx, e.Events)
		if err != nil {
			down = err
			continue
		}
		live = append(live, r)
	}
	// gone narrows ds to what no live cache holds; the empty blob is
	// always at hand.
	gone := func(ds []digest.Digest) []digest.Digest {
		ds = nonEmpty(ds)
		for _, r := range live {
			if len(ds) == 0 {
				break
			}
			m, err := r.FindMissing(ctx, ds)
			if err != nil {
				down = err
				continue
			}
			ds = m
		}
		return ds
	}
	t := cache.NewWalk(roots)
	for level := t.Next(); len(level) > 0; level = t.Next() {
		all = append(all, level...)
		miss := gone(level)
		missing = append(missing, miss...)
		absent := setOf(miss)
		for _, d := range level {
			if absent[d] {
				continue
			}
			data, err := e.readDir(ctx, storage, d)
			if err != nil {
				return nil, nil, err
			}
			if _, err := t.Add(d, data); err != nil {
				return nil, nil, err
			}
		}
	}
	all = append(all, t.Files...)
	miss := gone(t.Files)
	missing = append(missing, miss...)
	if len(missing) > 0 && down != nil {
		return all, missing, down
	}
	return all, missing, nil
}

// readDir reads one Directory from the local store, else from the first
// storage cache that has it, verified.
func (e *Engine) readDir(ctx context.Context, storage []*Cache, d digest.Digest) ([]byte, error) {
	if d.Size == 0 {
		return nil, nil
	}
	if data, err := e.Store.ReadBlob(d); err == nil {
		return data, nil
	}
	return readFirst(ctx, e, storage, d)
}

// confirm returns the digests of ds that no cache in storage holds
// (FindMissingBlobs on each, in turn). A cache that cannot be asked is an
// error when something is still unconfirmed.
func (e *Engine) confirm(ctx context.Context, storage []*Cache, ds []digest.Digest) ([]digest.Digest, error) {
	var down error
	need := nonEmpty(ds)
	for _, c := range storage {
		if len(need) == 0 {
			return nil, nil
		}
		r, err := c.connect(ctx, e.Events)
		if err == nil {
			var m []digest.Digest
			if m, err = r.FindMissing(ctx, need); err == nil {
				need = m
				continue
			}
		}
		down = err
	}
	if len(need) > 0 && down != nil {
		return need, down
	}
	return need, nil
}

// nonEmpty drops the empty blob, which every cache is taken to hold.
func nonEmpty(ds []digest.Digest) []digest.Digest {
	var out []digest.Digest
	for _, d := range ds {
		if d.Size > 0 {
			out = append(out, d)
		}
	}
	return out
}

// sizeOf adds up the sizes of ds.
func sizeOf(ds []digest.Digest) (n int64) {
	for _, d := range ds {
		n += d.Size
	}
	return n
}

// names lists the caches' names.
func names(cs []*Cache) string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name())
	}
	return strings.Join(out, ", ")
}
