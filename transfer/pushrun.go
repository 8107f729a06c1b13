package transfer

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// pushRun is what the refs of one Push or Copy share: the totals, the
// artifacts on their way to targets and the uploads in flight. Refs naming
// one artifact (its strong and weak key, as ls lists them) move it once
// per target: on each target the first to arrive carries it and writes all
// its refs in one index entry, the others wait for that target alone and
// are done with it. A blob several refs need goes to a target once. It is
// safe for concurrent use.
type pushRun struct {
	blobs, bytes, present atomic.Int64

	mu        sync.Mutex
	artifacts map[landing]*artifactFlight
	uploads   flights[upload] // in flight
	sent      map[upload]bool // landed in this run
}

func newPushRun() *pushRun {
	return &pushRun{artifacts: map[landing]*artifactFlight{}, sent: map[upload]bool{}}
}

// landing is one artifact going to one target (by name).
type landing struct {
	d      digest.Digest
	target string
}

// artifactFlight is one artifact pushed to one target by the first of its
// refs to arrive there; done closes once it is over.
type artifactFlight struct {
	done chan struct{}
	// ref is the ref that carried it, result its outcome and refs the
	// refs of the index entry it wrote; set before done closes.
	ref    string
	result Result
	refs   []string
}

// upload is one blob going to one target.
type upload struct {
	target *Cache
	d      digest.Digest
}

// artifact joins the flight of the artifact d names to target: first is
// true for the ref that carries it there, which must call landed.
func (run *pushRun) artifact(d digest.Digest, target string) (f *artifactFlight, first bool) {
	run.mu.Lock()
	defer run.mu.Unlock()
	k := landing{d, target}
	if f, ok := run.artifacts[k]; ok {
		return f, false
	}
	f = &artifactFlight{done: make(chan struct{})}
	run.artifacts[k] = f
	return f, true
}

// wrote records the refs of the entry the carrier wrote. A nil flight (a
// ref that does not carry its artifact) records nothing.
func (f *artifactFlight) wrote(refs []string) {
	if f != nil {
		f.refs = refs
	}
}

// landed ends the flight with the carrier's result. The flight is kept
// for the run: a ref of the artifact that comes later is done with it too.
func (f *artifactFlight) landed(ref string, result Result) {
	f.ref, f.result = ref, result
	close(f.done)
}

// wait waits for the carrier.
func (f *artifactFlight) wait(ctx context.Context) error {
	select {
	case <-f.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// carried is ref's result on the flight's target when the carrier wrote
// an index entry there naming ref too (in a dry run: would write);
// otherwise the ref goes there itself.
func (f *artifactFlight) carried(ref string) (Result, bool) {
	r := f.result
	if !slices.Contains(f.refs, ref) {
		return Result{}, false
	}
	res := Result{Ref: ref, Target: r.Target, Digest: r.Digest}
	verb := ""
	switch r.Status {
	case StatusDone, StatusRepaired:
		res.Status, verb = StatusDone, "moved"
	case StatusWouldPush, StatusWouldRepair:
		res.Status, verb = StatusWouldPush, "would move"
	default:
		return Result{}, false
	}
	if ref != f.ref {
		res.Reason = verb + " once with " + f.ref
	}
	return res, true
}

// carriedHere is ref's result on target when the artifact d was carried
// there in this run by one of its refs that also wrote ref's entry (a copy
// then finds the target naming d for ref: done, not skipped). It waits for
// a carrier still in flight to that target; the carrier never waits for
// ref.
func (run *pushRun) carriedHere(ctx context.Context, d digest.Digest, ref, target string) (Result, bool) {
	run.mu.Lock()
	f, ok := run.artifacts[landing{d, target}]
	run.mu.Unlock()
	if !ok || f.wait(ctx) != nil {
		return Result{}, false
	}
	return f.carried(ref)
}

// claim splits ds, which target lacked when asked, into the blobs this ref
// sends (it must release them) and those another ref of the run is
// sending there or has sent, with what to wait on for each in flight.
func (run *pushRun) claim(target *Cache, ds []digest.Digest) (mine []digest.Digest, theirs map[digest.Digest]<-chan struct{}) {
	run.mu.Lock()
	defer run.mu.Unlock()
	theirs = map[digest.Digest]<-chan struct{}{}
	for _, d := range ds {
		k := upload{target, d}
		if run.sent[k] {
			continue
		}
		if ok, done := run.uploads.claim(k); ok {
			mine = append(mine, d)
		} else {
			theirs[d] = done
		}
	}
	return mine, theirs
}

// tally is what a dry run counts of ds, the blobs target lacks: those no
// other ref of the run counted there, as the real run sends each blob to a
// target once. With no run, all of them.
func (run *pushRun) tally(target *Cache, ds []digest.Digest) []digest.Digest {
	if run == nil {
		return ds
	}
	mine, _ := run.claim(target, ds)
	run.release(target, mine, true)
	return mine
}

// release ends uploads this ref claimed; ok says they all landed.
func (run *pushRun) release(target *Cache, ds []digest.Digest, ok bool) {
	run.mu.Lock()
	defer run.mu.Unlock()
	for _, d := range ds {
		k := upload{target, d}
		if ok {
			run.sent[k] = true
		}
		run.uploads.release(k)
	}
}

func (run *pushRun) stats(start time.Time, results [][]Result) Stats {
	out := Stats{Pushed: Flow{run.blobs.Load(), run.bytes.Load()}, BlobsPresent: run.present.Load(), Seconds: time.Since(start).Seconds()}
	for _, rs := range results {
		for _, r := range rs {
			out.WouldBlobs += r.Blobs
			out.WouldBytes += r.Bytes
		}
	}
	return out
}
