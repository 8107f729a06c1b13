package transfer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/remotes"
)

// Cache is one configured cache for a run: connected and probed on first
// use. Once it proves unreachable or refuses us it is skipped for a while,
// then probed again by the next caller, so a cache that comes back is used
// again, in a long run as in a long-running process. The waits double
// from reprobeMin to reprobeMax while the cache keeps failing, and start
// again from reprobeMin once it answered for reprobeMax.
//
// A Cache is shared by its callers; each tells its own Events: connect
// and kill take the caller's, and calls made with a context its Events
// were bound to (Events.bind) report their retries to it.
type Cache struct {
	Config config.Cache

	dial dialer // dialRemote unless a test gives another
	// shared caps the run's bytes over every cache (--bwlimit).
	shared *rate.Limiter

	mu sync.Mutex
	// breaker says whether the cache may be asked; its backoff is
	// reprobeMin unless a test sets it.
	breaker
	// remote and caps are set by the first probe that succeeds and kept,
	// so callers read caps after a connect that returned no error.
	remote remote
	caps   remotes.Capabilities
	// uploadKey names the uploads to the cache (remotes.WithUploadKey);
	// set before the cache is first used.
	uploadKey string
	warned    map[string]bool
	use       usage
}

// usage is what a cache did in a run: blobs and bytes moved from or to
// it, errors, and when it was first and last asked.
type usage struct {
	blobs, bytes, errors int64
	hits, misses         int64
	corrupt              int64
	first, last          time.Time
}

// CacheUsage is what one cache did in a run, for -v and --json.
type CacheUsage struct {
	Name   string `json:"name"`
	Blobs  int64  `json:"blobs"`
	Bytes  int64  `json:"bytes"`
	Errors int64  `json:"errors"`
	// Hits and Misses count the index lookups the cache answered.
	Hits   int64 `json:"hits"`
	Misses int64 `json:"misses"`
	// Corrupt counts answers refused because their bytes did not match
	// their digests (each counts in Errors too).
	Corrupt int64 `json:"corrupt,omitempty"`
	// Seconds runs from the first request to the cache to its last answer.
	Seconds float64 `json:"seconds"`
}

// Usage is what the cache did in this run.
func (c *Cache) Usage() CacheUsage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheUsage{Name: c.Name(), Blobs: c.use.blobs, Bytes: c.use.bytes, Errors: c.use.errors,
		Hits: c.use.hits, Misses: c.use.misses, Corrupt: c.use.corrupt, Seconds: c.use.last.Sub(c.use.first).Seconds()}
}

// Down says whether the cache is skipped now: its breaker is open since a
// call failed, until a probe finds it answers again.
func (c *Cache) Down() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead != nil
}

// count records blobs moved from or to the cache, errors it gave, and
// that it was just asked.
func (c *Cache) count(blobs int, bytes int64, errs int) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.use.blobs += int64(blobs)
	c.use.bytes += bytes
	c.use.errors += int64(errs)
	if c.use.first.IsZero() {
		c.use.first = now
	}
	c.use.last = now
}

// asked records that the cache was asked and answered, or failed (err).
func (c *Cache) asked(err error) {
	errs := 0
	if err != nil {
		errs = 1
	}
	c.count(0, 0, errs)
}

// refused records an answer the cache sent corrupt (err), refused.
func (c *Cache) refused(err error) {
	c.asked(err)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.use.corrupt++
}

// answered records an index lookup the cache answered: a hit or a miss.
func (c *Cache) answered(hit bool) {
	c.asked(nil)
	c.mu.Lock()
	defer c.mu.Unlock()
	if hit {
		c.use.hits++
	} else {
		c.use.misses++
	}
}

// warnOnce warns once per run and cache about one kind of problem.
func (c *Cache) warnOnce(key, msg string, ev Events) {
	c.mu.Lock()
	first := !c.warned[key]
	if c.warned == nil {
		c.warned = map[string]bool{}
	}
	c.warned[key] = true
	c.mu.Unlock()
	if first {
		ev.Warn(msg)
	}
}

// keyUploads names uploads to targets after the local store's ID, so that
// a push or copy cut short resumes in the next run from what each target
// holds. A store without an ID (read-only) leaves uploads named at random.
func (e *Engine) keyUploads(targets []*Cache) {
	id, err := e.Store.ID()
	if err != nil {
		return
	}
	for _, t := range targets {
		t.mu.Lock()
		t.uploadKey = id
		t.mu.Unlock()
	}
}

// refusedFetch records a Remote Asset fetch the cache refused, which
// counts as a miss, and warns once per run how to fix the server.
func (c *Cache) refusedFetch(err error, ev Events) {
	c.asked(nil)
	c.warnOnce("fetch-refused", fmt.Sprintf("%s; treated as a miss. Server-side fix: give bb_remote_asset an \"error\" fetcher so unknown URIs answer NOT_FOUND", c.describe(err)), ev)
}

// NewCaches wraps configured caches, keeping their order. A bwlimit over
// 0 caps the bytes per second of all of them together, on top of each
// cache's own bandwidth.
func NewCaches(cfgs []config.Cache, bwlimit int64) []*Cache {
	var shared *rate.Limiter
	if bwlimit > 0 {
		shared = remotes.NewLimiter(bwlimit)
	}
	out := make([]*Cache, len(cfgs))
	for i, c := range cfgs {
		out[i] = &Cache{Config: c, shared: shared}
	}
	return out
}

// Name is the configured name.
func (c *Cache) Name() string { return c.Config.Name }

// probeBound is how long a probe of the cache may take, connecting
// included: its connect-timeout, config.DefaultConnectTimeout when unset.
func probeBound(cfg config.Cache) time.Duration {
	if d := cfg.Connection.ConnectTimeout; d > 0 {
		return d
	}
	return config.DefaultConnectTimeout
}

// connect returns the cache's remote, dialling and probing it first when
// no probe has answered yet, or when the cache is dead and its wait is
// over: then this caller probes it again while others are told it is
// skipped. A cache that fails is skipped for a while; the error names it
// and its URL. ev gets this caller's warnings.
func (c *Cache) connect(ctx context.Context, ev Events) (remote, error) {
	for {
		c.mu.Lock()
		v, probing, err := c.enter()
		r := c.remote
		c.mu.Unlock()
		switch v {
		case askCache:
			return r, nil
		case skipCache:
			return nil, err
		case awaitProbe:
			// The first probe is under way: its answer is everyone's.
			select {
			case <-probing:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		r, err = c.probe(ctx, r, ev)
		if err != nil || r != nil {
			return r, err
		}
		// This caller gave up (its context is done) before the probe
		// answered: the next caller probes.
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// probe dials (or, given old, probes again) the cache and ends the
// breaker's probe with the answer: the remote, or the cache dead for a
// while. It returns neither when ctx ended first, since that says nothing
// about the cache.
func (c *Cache) probe(ctx context.Context, old remote, ev Events) (remote, error) {
	dial := c.dial
	if dial == nil {
		dial = dialRemote
	}
	var opts []remotes.Option
	if c.shared != nil {
		opts = append(opts, remotes.WithLimiters(c.shared))
	}
	c.mu.Lock()
	if c.uploadKey != "" {
		opts = append(opts, remotes.WithUploadKey(c.uploadKey))
	}
	c.mu.Unlock()
	r, caps, err := dial(ctx, c.Config, old, opts...)
	if err != nil && ctx.Err() != nil {
		c.mu.Lock()
		c.abandon()
		c.mu.Unlock()
		return nil, nil
	}
	c.asked(err)
	c.mu.Lock()
	wait, wasDead := c.probed(err)
	if err == nil && c.remote == nil {
		c.remote, c.caps = r, caps
	}
	c.mu.Unlock()
	switch {
	case err != nil && wasDead:
		ev.info(fmt.Sprintf("%s; still skipped, asked again in %s", c.describe(err), wait))
	case err != nil:
		ev.Warn(c.skipped(err, wait))
	case wasDead:
		ev.info(fmt.Sprintf("cache %s (%s) answers again: asking it again", c.Config.Name, c.Config.URL))
	}
	return r, err
}

// down is why the cache is skipped now, without asking it; nil when it
// may be asked.
func (c *Cache) down() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead != nil && c.clock().Before(c.retryAt) {
		return c.dead
	}
	return nil
}

// kill skips the cache for a while after a call failed, with one warning;
// when it is skipped already, the failure adds nothing.
func (c *Cache) kill(err error, ev Events) {
	c.mu.Lock()
	wait, ok := c.trip(err)
	c.mu.Unlock()
	if ok {
		ev.Warn(c.skipped(err, wait))
	}
}

// replied records a call's outcome: one that failed as a dead cache does
// (fatal) skips the cache for a while, so that the next callers fail at
// once rather than each waiting for it.
func (c *Cache) replied(err error, ev Events) {
	c.asked(err)
	if fatal(err) {
		c.kill(err, ev)
	}
}

// failed records a call the cache failed: skipped for a while when it is
// unreachable or refuses us (fatal), else warned about.
func (c *Cache) failed(err error, ev Events) {
	c.replied(err, ev)
	if !fatal(err) {
		ev.Warn(c.describe(err))
	}
}

// skipped is the warning for a cache found dead.
func (c *Cache) skipped(err error, wait time.Duration) string {
	return fmt.Sprintf("%s; skipped, asked again in %s", c.describe(err), wait)
}

// fatal says whether an error means the cache should be skipped from now
// on: unreachable, timed out, or refusing our credentials.
func fatal(err error) bool {
	var re *remotes.Error
	if !errors.As(err, &re) {
		return false
	}
	switch re.Code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Unauthenticated, codes.PermissionDenied:
		return true
	}
	return re.Unreachable()
}

// Connect dials and probes caches all at once, and returns once each has
// answered or failed: a run's first requests then wait for no probe (a
// sync probes its targets while its source lists). A cache that fails is
// skipped for a while, as when a request finds it down, and ev is told.
func Connect(ctx context.Context, caches []*Cache, ev Events) {
	var wg sync.WaitGroup
	for _, c := range caches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.connect(ctx, ev)
		}()
	}
	wg.Wait()
}

// Close closes every connection.
func Close(caches []*Cache) {
	for _, c := range caches {
		c.mu.Lock()
		if c.remote != nil {
			c.remote.Close()
		}
		c.mu.Unlock()
	}
}

// describe names the cache and its URL in an error message, once.
func (c *Cache) describe(err error) string {
	var re *remotes.Error
	if errors.As(err, &re) {
		return err.Error()
	}
	return fmt.Sprintf("cache %s (%s): %v", c.Config.Name, c.Config.URL, err)
}
