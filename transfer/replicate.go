package transfer

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/words"
)

// Replicator forwards the index entries clients write to a store to
// replica caches: the engine behind `serve --replicate-to`, the mirror
// image of Mirror. Each entry is journaled per replica (journal) before
// Replicate returns, then pushed by one worker per replica with Push, so
// each replica gets every blob the entry's closure needs (those
// FindMissingBlobs says it lacks) before the entry itself; a replica that
// fails is skipped for a while by its Cache's breaker and the work is
// retried, with backoff, from the journal, which also survives a restart
// or a kill.
//
// A Replicator is safe for concurrent use and lives as long as the server.
type Replicator struct {
	replicas []*replica
	all      bool
	ev       Events
	engines  map[cache.Kind]*Engine

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// replica is one replica: its cache, its journal and its counters.
type replica struct {
	c    *Cache
	j    *journal
	wake chan struct{}

	done, failed, dropped atomic.Int64
	// lag is how long the last entry replicated waited, in nanoseconds.
	lag atomic.Int64
}

// ReplicatorOptions configure a Replicator.
type ReplicatorOptions struct {
	// Dir holds a journal per replica, in Dir/NAME.
	Dir string
	// All fails Replicate when a replica cannot take the entries now
	// (--replicate-policy all); without it Replicate returns once they
	// are journaled.
	All bool
	// Jobs bounds the refs moving bytes at once to each replica.
	Jobs int
	// Bound is the most entries a replica's journal holds; past it the
	// oldest is dropped, with a warning. The default is
	// DefaultJournalBound.
	Bound int
	// Events receive warnings (a replica down, work dropped) and, with
	// OnInfo, each entry replicated and the journals' depth.
	Events Events
}

// DefaultJournalBound bounds a replica's journal when ReplicatorOptions
// leave it unset.
const DefaultJournalBound = 100_000

// A replica that is down is probed again after at most replicaReprobeMax,
// so that it catches up soon after it comes back; work is retried after
// replicaRetryMin, doubling to replicaRetryMax while it keeps failing.
// replicaBatch bounds the refs of one push.
const (
	replicaReprobeMax = 5 * time.Second
	replicaRetryMin   = 250 * time.Millisecond
	replicaRetryMax   = 2 * time.Second
	replicaBatch      = 64
)

// NewReplicator opens a journal per replica under o.Dir, with what an
// earlier run left in it queued again, and starts their workers, which
// push from store. Close stops them.
func NewReplicator(store *cache.Store, replicas []*Cache, o ReplicatorOptions) (*Replicator, error) {
	if o.Bound <= 0 {
		o.Bound = DefaultJournalBound
	}
	o.Events.OnPlan = nil // a replicator has no end to plan for
	r := &Replicator{all: o.All, ev: o.Events, engines: map[cache.Kind]*Engine{}}
	// An index-only replica's readers take blobs from the replicas with
	// storage: its entries wait until those hold every blob.
	storage := filter(replicas, hasStorage)
	for _, k := range []cache.Kind{cache.KindBst1Artifact, cache.KindBst2Artifact, cache.KindSource} {
		r.engines[k] = &Engine{Store: store, Kind: k, Storage: storage, Jobs: o.Jobs, Events: o.Events}
	}
	for _, c := range replicas {
		j, err := openJournal(filepath.Join(o.Dir, c.Name()), o.Bound)
		if err != nil {
			return nil, fmt.Errorf("replica %s: %w", c.Name(), err)
		}
		c.mu.Lock()
		c.ceiling = replicaReprobeMax
		c.mu.Unlock()
		r.replicas = append(r.replicas, &replica{c: c, j: j, wake: make(chan struct{}, 1)})
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	for _, rp := range r.replicas {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.work(ctx, rp)
		}()
	}
	return r, nil
}

// Replicate queues the local entries of kind for refs to every replica,
// durably: it returns once each replica's journal holds them. With All it
// then pushes them to every replica and fails unless each took them.
func (r *Replicator) Replicate(ctx context.Context, kind cache.Kind, refs []string) error {
	if r.engines[kind] == nil {
		return nil // not a BuildStream entry: the server's own records stay local
	}
	ws := make([]work, len(refs))
	for i, ref := range refs {
		ws[i] = work{kind, ref}
	}
	for _, rp := range r.replicas {
		dropped, err := rp.j.add(ws)
		r.dropped(rp, dropped)
		if err != nil {
			return fmt.Errorf("replica %s: %w", rp.c.Name(), err)
		}
		select {
		case rp.wake <- struct{}{}:
		default:
		}
	}
	if !r.all {
		return nil
	}
	// The journal still holds the entries: its worker finds them there
	// and moves nothing more.
	var errs []error
	results, _ := r.engines[kind].Push(ctx, refs, r.Replicas(), PushOptions{})
	for _, res := range results {
		if !landed(res.Status) {
			errs = append(errs, fmt.Errorf("replica %s: %s %s: %s", res.Target, res.Ref, res.Status, res.Reason))
		}
	}
	return errors.Join(errs...)
}

// landed says whether a push result leaves the replica holding the entry.
func landed(s Status) bool {
	return s == StatusDone || s == StatusSkipped || s == StatusRepaired
}

// dropped says, in one line, what the bound dropped from rp's journal
// for one write.
func (r *Replicator) dropped(rp *replica, ws []work) {
	if len(ws) == 0 {
		return
	}
	total := rp.dropped.Add(int64(len(ws)))
	r.ev.Warn(fmt.Sprintf("replica %s: journal full (bound %s): dropped the oldest %s (%s first), %d dropped since the start; a `bst-cache sync` from this cache to %s recovers them",
		rp.c.Name(), words.Plural(rp.j.bound, "ref"), words.Plural(len(ws), "ref"), ws[0], total, rp.c.Name()))
}

// work moves rp's journal to it until ctx ends.
func (r *Replicator) work(ctx context.Context, rp *replica) {
	wait := replicaRetryMin
	for ctx.Err() == nil {
		batch := rp.j.take(replicaBatch)
		if len(batch) == 0 {
			select {
			case <-rp.wake:
			case <-ctx.Done():
			}
			continue
		}
		if r.push(ctx, rp, batch) {
			wait = replicaRetryMin
			continue
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
		wait = min(2*wait, replicaRetryMax)
	}
}

// push moves a batch to rp and says whether every entry of it is done
// with; those that failed wait in the journal again.
func (r *Replicator) push(ctx context.Context, rp *replica, batch []work) bool {
	if err := rp.c.down(); err != nil {
		// Skipped for a while: nothing to ask it until the breaker
		// lets a probe through.
		for _, w := range batch {
			rp.j.retry(w)
		}
		return false
	}
	byKind := map[cache.Kind][]string{}
	for _, w := range batch {
		byKind[w.kind] = append(byKind[w.kind], w.ref)
	}
	ok := true
	for k, refs := range byKind {
		e := r.engines[k]
		if e == nil {
			r.ev.Warn(fmt.Sprintf("replica %s: journal entry of kind %q: not replicated", rp.c.Name(), k))
			for _, ref := range refs {
				rp.j.finish(work{k, ref})
			}
			continue
		}
		// Each ref leaves the journal as soon as its result is in.
		var mu sync.Mutex
		ev := r.ev
		ev.OnRef = func(res Result) {
			mu.Lock()
			defer mu.Unlock()
			if !r.landedOn(rp, work{k, res.Ref}, res) {
				ok = false
			}
		}
		eng := *e
		eng.Events = ev
		eng.Push(ctx, refs, []*Cache{rp.c}, PushOptions{})
	}
	st := r.stats(rp)
	if st.Queued == 0 {
		r.ev.info(fmt.Sprintf("%s: caught up", st))
	} else {
		r.ev.info(st.String())
	}
	return ok
}

// landedOn ends w's turn in rp's journal with its push result and says
// whether it is done with: landed, or never can (gone from the store, or
// the replica names another digest, which replication does not
// overwrite); otherwise it waits in the journal again.
func (r *Replicator) landedOn(rp *replica, w work, res Result) bool {
	switch {
	case landed(res.Status):
		rp.lag.Store(int64(time.Since(rp.j.finish(w))))
		rp.done.Add(1)
		r.ev.info(fmt.Sprintf("replica %s: %s %s", rp.c.Name(), res.Ref, res.Status))
	case res.Status == StatusMissing, res.Status == StatusConflict:
		rp.j.finish(w)
		rp.failed.Add(1)
		r.ev.Warn(fmt.Sprintf("replica %s: %s %s: %s: not replicated", rp.c.Name(), res.Ref, res.Status, res.Reason))
	default:
		rp.j.retry(w)
		rp.failed.Add(1)
		r.ev.info(fmt.Sprintf("replica %s: %s failed, queued again: %s", rp.c.Name(), res.Ref, res.Reason))
		return false
	}
	return true
}

// Replicas are the replica caches, in the order given.
func (r *Replicator) Replicas() []*Cache {
	out := make([]*Cache, len(r.replicas))
	for i, rp := range r.replicas {
		out[i] = rp.c
	}
	return out
}

// ReplicaStats are one replica's counters, since the server started
// (the journal's, since it was first written).
type ReplicaStats struct {
	Name string
	URL  string
	// Done counts entries the replica took; Failed the attempts that
	// failed (retried, or given up when they never can land); Dropped
	// those the journal's bound dropped.
	Done, Failed, Dropped int64
	// Queued is the journal's depth and Oldest when its oldest entry was
	// queued (zero when it is empty).
	Queued int
	Oldest time.Time
	// Lag is how long the last entry the replica took waited for it, from
	// the client's write (zero before the first).
	Lag time.Duration
	// Blobs and Bytes are what was sent to the replica.
	Blobs, Bytes int64
}

// String says it all in one line, for logs.
func (s ReplicaStats) String() string {
	queued := words.Plural(s.Queued, "ref") + " queued"
	if s.Queued > 0 {
		queued += fmt.Sprintf(" (the oldest %s ago)", time.Since(s.Oldest).Round(time.Second))
	}
	line := fmt.Sprintf("replica %s (%s): %s replicated, %s failed, %s dropped, %s; %s (%s) sent",
		s.Name, s.URL, words.Plural(s.Done, "ref"), words.Plural(s.Failed, "attempt"), words.Plural(s.Dropped, "ref"),
		queued, words.Plural(s.Blobs, "blob"), words.Plural(s.Bytes, "byte"))
	if s.Done > 0 {
		line += fmt.Sprintf("; lag %s", s.Lag.Round(time.Millisecond))
	}
	return line
}

// Stats are the counters of every replica, in order.
func (r *Replicator) Stats() []ReplicaStats {
	var out []ReplicaStats
	for _, rp := range r.replicas {
		out = append(out, r.stats(rp))
	}
	return out
}

func (r *Replicator) stats(rp *replica) ReplicaStats {
	n, oldest := rp.j.depth()
	use := rp.c.Usage()
	return ReplicaStats{Name: rp.c.Name(), URL: rp.c.Config.URL, Done: rp.done.Load(), Failed: rp.failed.Load(),
		Dropped: rp.dropped.Load(), Queued: n, Oldest: oldest, Lag: time.Duration(rp.lag.Load()),
		Blobs: use.Blobs, Bytes: use.Bytes}
}

// Close stops the workers; what they did not move stays journaled for the
// next run. It closes the replicas' connections.
func (r *Replicator) Close() {
	r.cancel()
	r.wg.Wait()
	Close(r.Replicas())
}
