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
// use, and skipped for the rest of the run once it proves unreachable or
// refuses us.
type Cache struct {
	Config config.Cache

	once sync.Once
	dial dialer // dialRemote unless a test gives another
	// shared caps the run's bytes over every cache (--bwlimit).
	shared *rate.Limiter
	remote remote
	caps   remotes.Capabilities

	mu     sync.Mutex
	dead   error // set when the cache is skipped
	warned map[string]bool
	use    usage
}

// usage is what a cache did in a run: blobs and bytes moved from or to
// it, errors, and when it was first and last asked.
type usage struct {
	blobs, bytes, errors int64
	first, last          time.Time
}

// CacheUsage is what one cache did in a run, for -v and --json.
type CacheUsage struct {
	Name   string `json:"name"`
	Blobs  int64  `json:"blobs"`
	Bytes  int64  `json:"bytes"`
	Errors int64  `json:"errors"`
	// Seconds runs from the first request to the cache to its last answer.
	Seconds float64 `json:"seconds"`
}

// Usage is what the cache did in this run.
func (c *Cache) Usage() CacheUsage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheUsage{Name: c.Name(), Blobs: c.use.blobs, Bytes: c.use.bytes, Errors: c.use.errors, Seconds: c.use.last.Sub(c.use.first).Seconds()}
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

// probeTimeout bounds the first contact with a cache.
const probeTimeout = 10 * time.Second

// connect dials and probes the cache once. A cache that fails is dead for
// the run; the error names it and its URL.
func (c *Cache) connect(ctx context.Context, ev Events) (remote, error) {
	c.once.Do(func() {
		dial := c.dial
		if dial == nil {
			dial = dialRemote
		}
		var opts []remotes.Option
		if c.shared != nil {
			opts = append(opts, remotes.WithLimiters(c.shared))
		}
		r, caps, err := dial(ctx, c.Config, ev, opts...)
		c.asked(err)
		if err != nil {
			c.kill(err, ev)
			return
		}
		c.remote, c.caps = r, caps
	})
	if err := c.deadErr(); err != nil {
		return nil, err
	}
	return c.remote, nil
}

func (c *Cache) deadErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

// kill marks the cache as skipped for the rest of the run, with one warning.
func (c *Cache) kill(err error, ev Events) {
	c.mu.Lock()
	first := c.dead == nil
	if first {
		c.dead = err
	}
	c.mu.Unlock()
	if first {
		ev.Warn(c.describe(err) + "; skipped for the rest of this run")
	}
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

// Close closes every connection.
func Close(caches []*Cache) {
	for _, c := range caches {
		if c.remote != nil {
			c.remote.Close()
		}
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
