package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/singleflight"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/remotes"
)

// Mirror fills a local store from upstream caches on demand: the engine
// behind `serve --upstream`. It stands on the client's own blocks: refs
// are pulled as Pull pulls them (the priority walk, whole closures, every
// blob verified before it is stored, GetTree and batches, a cache that
// fails skipped for a while and probed again) through one fetcher shared
// by every request, so any number of requests for the same blob or ref at
// once cause one upstream fetch, and the bytes in flight are bounded for
// the whole mirror as for one run.
//
// A Mirror is safe for concurrent use and lives as long as the server.
type Mirror struct {
	store     *cache.Store
	upstreams []*Cache
	ev        Events
	// engines pull refs of each kind; they share f and jobs.
	engines map[cache.Kind]*Engine
	f       *fetcher
	refs    singleflight.Group
	// stall is how long a reader may take no bytes (handoffStall).
	stall time.Duration
	// timeout bounds one fill (MirrorOptions.FillTimeout).
	timeout time.Duration

	// spoiled are the upstreams that sent corrupt data for a blob read
	// through: a streamed read cannot turn to the next upstream once its
	// bytes went out, so the client's next read of the blob does.
	mu      sync.Mutex
	spoiled map[digest.Digest][]*Cache
}

// maxSpoiled bounds the blobs remembered as corrupt on some upstream; past
// it the memory starts afresh.
const maxSpoiled = 4096

// spoil remembers that c sent corrupt data for d.
func (m *Mirror) spoil(d digest.Digest, c *Cache) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.spoiled) >= maxSpoiled {
		m.spoiled = nil
	}
	if m.spoiled == nil {
		m.spoiled = map[digest.Digest][]*Cache{}
	}
	m.spoiled[d] = append(m.spoiled[d], c)
}

// sources are the storage upstreams to read d from: those that did not
// send it corrupt, in order.
func (m *Mirror) sources(d digest.Digest) []*Cache {
	m.mu.Lock()
	defer m.mu.Unlock()
	bad := m.spoiled[d]
	var out []*Cache
	for _, c := range m.f.caches {
		if !slices.Contains(bad, c) {
			out = append(out, c)
		}
	}
	return out
}

// MirrorOptions configure a Mirror.
type MirrorOptions struct {
	// Jobs bounds the refs being filled at once (their bytes moving).
	Jobs int
	// FillTimeout bounds one fill, whoever waits for it: a fill goes on
	// when the request that started it is cancelled, for the others that
	// wait for it, but never longer than this.
	FillTimeout time.Duration
	// Keep, when positive, is the largest blob the mirror stores (its
	// quota): a larger one is read through without being stored, and an
	// artifact that holds one is not filled.
	Keep int64
	// Events receive warnings (an upstream skipped, corrupt data) and,
	// with OnInfo, each lookup and fill.
	Events Events
}

// DefaultFillTimeout bounds a fill when MirrorOptions leave it unset.
const DefaultFillTimeout = 30 * time.Minute

// Clients wait on a mirror's upstreams, so an upstream that does not
// answer is given up on sooner than a client gives up on its caches: at
// most one retry, soon, and calls bounded in time; the upstream is then
// skipped for a while (Cache), and the mirror answers from what it holds.
const (
	upstreamRetries        = 1
	upstreamRetryDelay     = 200 * time.Millisecond
	upstreamConnectTimeout = 5 * time.Second
	upstreamRequestTimeout = 30 * time.Second
	upstreamStallTimeout   = 30 * time.Second
)

// upstreamConnection caps a cache's connection settings for a mirror.
func upstreamConnection(c config.Connection) config.Connection {
	capAt := func(v *time.Duration, bound time.Duration) {
		if *v <= 0 || *v > bound {
			*v = bound
		}
	}
	c.RetryLimit = min(c.RetryLimit, upstreamRetries)
	capAt(&c.RetryDelay, upstreamRetryDelay)
	capAt(&c.ConnectTimeout, upstreamConnectTimeout)
	capAt(&c.RequestTimeout, upstreamRequestTimeout)
	capAt(&c.StallTimeout, upstreamStallTimeout)
	return c
}

// NewMirror fills store from upstreams, in priority order. It caps their
// connection settings (upstreamConnection) before they are first used.
func NewMirror(store *cache.Store, upstreams []*Cache, o MirrorOptions) *Mirror {
	if o.FillTimeout <= 0 {
		o.FillTimeout = DefaultFillTimeout
	}
	for _, u := range upstreams {
		u.Config.Connection = upstreamConnection(u.Config.Connection)
	}
	// A run's plan counts each blob once, keeping every digest planned:
	// a mirror has no end to plan for.
	o.Events.OnPlan = nil
	m := &Mirror{store: store, upstreams: upstreams, ev: o.Events, engines: map[cache.Kind]*Engine{}, stall: handoffStall, timeout: o.FillTimeout}
	// A fill's refs are written at once: a client waits for them.
	m.f = newFetcher(store, filter(upstreams, hasStorage), false, o.Events, nil)
	m.f.keep = o.Keep
	run := &shared{f: m.f, jobs: newSlots(max(o.Jobs, 1))}
	for _, k := range []cache.Kind{cache.KindBst1Artifact, cache.KindBst2Artifact, cache.KindSource} {
		m.engines[k] = &Engine{Store: store, Kind: k, Caches: upstreams, Jobs: o.Jobs, Events: o.Events, shared: run}
	}
	return m
}

// shared is what a long-lived engine's pulls share: one fetcher (its
// single flights and byte budget) and one set of slots.
type shared struct {
	f    *fetcher
	jobs slots
}

// Probe connects to every upstream at once and returns, in order, nil for
// each that answers or why it does not (it is then skipped for a while,
// as after any failure). For a server's start-up line: a mirror asks its
// upstreams only on a miss.
func (m *Mirror) Probe(ctx context.Context) []error {
	errs := make([]error, len(m.upstreams))
	var wg sync.WaitGroup
	for i, c := range m.upstreams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.connect(ctx, m.ev)
		}()
	}
	wg.Wait()
	return errs
}

// Upstreams are the caches the mirror fills from, in priority order.
func (m *Mirror) Upstreams() []*Cache { return m.upstreams }

// FillRef makes the ref of kind k local with its whole closure, from the
// first upstream that names it and whose closure the upstreams complete.
// found is false when none does: every upstream answered that it does not
// hold it, holds it incomplete, or could not be asked (an outage is a
// miss for a mirror); reason says which. Requests for the same ref at
// once share one fill.
func (m *Mirror) FillRef(ctx context.Context, k cache.Kind, ref string) (found bool, reason string, err error) {
	e, ok := m.engines[k]
	if !ok {
		return false, "", fmt.Errorf("mirror: no upstream lookups for %s refs", k)
	}
	ch := m.refs.DoChan(string(k)+"\x00"+ref, func() (any, error) {
		// The fill outlives the request that started it: others may wait
		// for it, and what it stores serves the next request anyway.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.timeout)
		defer cancel()
		res, _ := e.Pull(fctx, []string{ref}, PullOptions{})
		return res[0], nil
	})
	select {
	case <-ctx.Done():
		return false, "", ctx.Err()
	case r := <-ch:
		res := r.Val.(Result)
		switch res.Status {
		case StatusDone, StatusSkipped:
			return true, "", nil
		case StatusMissing, StatusFailed:
			return false, res.Reason, nil
		}
		return false, res.Reason, errors.New(res.Reason)
	}
}

// FillBlobs makes ds local from the upstreams, each blob from the first
// that has it, and returns those none had.
func (m *Mirror) FillBlobs(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	return m.f.fetch(ctx, ds, nil, nil)
}

// FillTrees makes the Directories under roots local (not their files):
// what GetTree answers with.
func (m *Mirror) FillTrees(ctx context.Context, roots []digest.Digest) (lost []digest.Digest, err error) {
	err = m.f.walk(ctx, cache.Roots{Dirs: roots}, nil, nil, func([]digest.Digest) {}, func(miss []digest.Digest) {
		lost = append(lost, miss...)
	})
	return lost, err
}

// Missing returns those of ds no upstream holds, asking each storage
// upstream in order about what the ones before it lack. An upstream that
// cannot be asked holds nothing, for this answer.
func (m *Mirror) Missing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	for _, c := range m.f.caches {
		if len(ds) == 0 {
			break
		}
		r, err := c.connect(ctx, m.ev)
		if err != nil {
			continue
		}
		missing, err := r.FindMissing(ctx, ds)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			c.failed(err, m.ev)
			continue
		}
		c.asked(nil)
		ds = missing
	}
	return ds, nil
}

// StreamBlob sends d to w as it arrives from the first upstream that has
// it, and stores it once every byte matched its digest; a blob larger than
// the mirror keeps (MirrorOptions.Keep) is sent but not stored. found is false when no upstream has
// it (or none could be asked) and nothing was written to w. When the
// bytes do not match the digest, the error wraps cache.ErrDigestMismatch,
// nothing is stored, and the upstream is counted against and not asked
// for d again (for a while), so that the client's next read turns to the
// next upstream; w may have had some of the bytes. When another request
// is fetching d already, StreamBlob waits for it and reads the stored
// blob.
//
// The fetch runs at the upstream's pace, whatever w's: a reader that
// falls behind by more than handoffDepth messages for handoffStall, or
// leaves, is cut off (its error says so) while the fetch goes on and
// stores the blob for the others waiting for it.
func (m *Mirror) StreamBlob(ctx context.Context, d digest.Digest, w io.Writer) (found bool, err error) {
	for {
		mine, wait := m.f.flights.claim(d)
		if mine {
			break
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return false, ctx.Err()
		}
		if f, err := m.store.Open(d); err == nil {
			_, err := io.Copy(w, f)
			f.Close()
			return true, err
		}
	}
	h := &handoff{ch: make(chan []byte, handoffDepth), quit: make(chan struct{}), stall: m.stall}
	type result struct {
		found bool
		err   error
	}
	done := make(chan result, 1)
	go func() {
		defer m.f.flights.release(d)
		defer close(h.ch)
		// The fetch outlives a reader that leaves: others wait for it.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.timeout)
		defer cancel()
		found, err := m.fetchBlob(fctx, d, h)
		done <- result{found, err}
	}()
	for p := range h.ch {
		if _, err := w.Write(p); err != nil {
			h.leave()
			return true, err
		}
		if ctx.Err() != nil {
			h.leave()
			return true, ctx.Err()
		}
	}
	res := <-done
	if res.err == nil && h.dropped {
		return true, fmt.Errorf("blob %s: the reader took nothing for %s: cut off", d, m.stall)
	}
	return res.found, res.err
}

// fetchBlob reads d from the first upstream that has it, within the
// mirror's budget of bytes in flight.
func (m *Mirror) fetchBlob(ctx context.Context, d digest.Digest, w io.Writer) (bool, error) {
	release, err := m.f.reserve(ctx, min(d.Size, streamWeight))
	if err != nil {
		return false, err
	}
	defer release()
	for _, c := range m.sources(d) {
		r, err := c.connect(ctx, m.ev)
		if err != nil {
			continue
		}
		found, err := m.streamFrom(ctx, c, r, d, w)
		if found || err != nil {
			return found, err
		}
	}
	return false, nil
}

// A blob read through is handed from its fetch to its reader through
// handoffDepth messages; a reader that takes none for handoffStall is
// cut off.
const (
	handoffDepth = 4
	handoffStall = 30 * time.Second
)

// handoff passes a fetch's bytes to a reader in another goroutine. Its
// Write never fails and never blocks for longer than stall: once the
// reader left or fell behind, the rest is dropped (dropped says so) and
// the fetch goes on for the store.
type handoff struct {
	ch      chan []byte
	quit    chan struct{}
	stall   time.Duration
	dropped bool // set by the writer before ch is closed
	left    sync.Once
}

func (h *handoff) Write(p []byte) (int, error) {
	if h.dropped {
		return len(p), nil
	}
	buf := append([]byte(nil), p...) // the writer reuses p
	t := time.NewTimer(h.stall)
	defer t.Stop()
	select {
	case h.ch <- buf:
	case <-h.quit:
		h.dropped = true
	case <-t.C:
		h.dropped = true
	}
	return len(p), nil
}

// leave tells the writer the reader is gone.
func (h *handoff) leave() { h.left.Do(func() { close(h.quit) }) }

// streamFrom streams d from one upstream to w, through the store's
// verifying writer unless d is larger than the mirror keeps.
func (m *Mirror) streamFrom(ctx context.Context, c *Cache, r remote, d digest.Digest, w io.Writer) (bool, error) {
	var bw *cache.BlobWriter
	var sent int64 // bytes that reached w
	out := countingWriter{w, func(n int64) { sent += n }}
	var dst io.Writer = out
	if m.f.keep <= 0 || d.Size <= m.f.keep {
		var err error
		if bw, err = m.store.NewWriter(d); err != nil {
			return false, err
		}
		defer bw.Abort() // after Commit, a no-op
		dst = io.MultiWriter(bw, out)
	}
	err := r.ReadBlobFrom(ctx, d, 0, dst)
	if err == nil && bw != nil {
		err = bw.Commit()
	}
	switch {
	case err == nil:
		c.count(1, d.Size, 0)
		return true, nil
	case errors.Is(err, remotes.ErrNotFound) && sent == 0:
		c.asked(nil)
		return false, nil
	case errors.Is(err, cache.ErrDigestMismatch), errors.Is(err, remotes.ErrCorrupt):
		c.refused(err)
		m.ev.Warn(fmt.Sprintf("cache %s (%s) sent corrupt data for %s, not stored: %v", c.Name(), c.Config.URL, d, err))
		m.spoil(d, c)
		if !errors.Is(err, cache.ErrDigestMismatch) {
			err = fmt.Errorf("%w: %w", cache.ErrDigestMismatch, err)
		}
		return true, err
	case ctx.Err() != nil:
		return sent > 0, ctx.Err()
	}
	c.failed(err, m.ev)
	if sent > 0 {
		return true, err
	}
	return false, nil // the next upstream may have it
}
