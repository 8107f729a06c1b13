package transfer

import "time"

// A dead cache is probed again after reprobeMin, then after twice as long
// each time it is found dead again, up to reprobeMax: a run that a cache
// fails for long pays one probe every reprobeMax at most.
const (
	reprobeMin = 5 * time.Second
	reprobeMax = 2 * time.Minute
)

// breaker says whether a cache may be asked. It is closed once a probe
// answered (ask the cache), open for a while once the cache failed (skip
// it, with the error that opened it), and has one caller probing when the
// cache was never asked or its wait is over (the others wait for the
// first probe's answer, or skip the cache while a later one is under way).
// The waits double from backoff to reprobeMax while the cache keeps
// failing, and start again from backoff once it answered for reprobeMax.
//
// A breaker is not safe for concurrent use: its owner guards it (Cache
// with its mu).
type breaker struct {
	// backoff is the first wait; reprobeMin when 0.
	backoff time.Duration
	// ceiling is the longest wait; reprobeMax when 0.
	ceiling time.Duration
	// now is the clock; time.Now when nil.
	now func() time.Time

	// reached is set once a probe succeeded.
	reached bool
	// probing is closed when the probe under way ends; nil when none is.
	probing chan struct{}
	// dead is why the cache is skipped until retryAt; wait is how long
	// the last death lasted.
	dead    error
	retryAt time.Time
	wait    time.Duration
	// revived is when the cache last answered again after a death.
	revived time.Time
}

func (b *breaker) clock() time.Time {
	if b.now == nil {
		return time.Now()
	}
	return b.now()
}

// decision is what a breaker tells a caller about to ask its cache.
type decision int

const (
	// askCache: it answered and is not dead.
	askCache decision = iota
	// probeCache, then tell probed: this caller is the one to.
	probeCache
	// awaitProbe: wait for the first probe (the channel enter returns),
	// then enter again.
	awaitProbe
	// skipCache: it is dead (the error enter returns).
	skipCache
)

func (d decision) String() string {
	return [...]string{"ask", "probe", "await", "skip"}[d]
}

// enter decides for one caller. With probeCache, the caller must end the
// probe with probed or abandon; with awaitProbe, it waits for the
// channel; with skipCache, the error is why the cache is dead.
func (b *breaker) enter() (decision, <-chan struct{}, error) {
	switch {
	case b.dead == nil && b.reached:
		return askCache, nil, nil
	case b.dead != nil && (b.probing != nil || b.clock().Before(b.retryAt)):
		return skipCache, nil, b.dead
	case b.probing != nil:
		return awaitProbe, b.probing, nil
	}
	b.probing = make(chan struct{})
	return probeCache, nil, nil
}

// probed ends the probe enter granted with its answer: nil when the cache
// answered, else the error that makes it dead for the returned wait.
// wasDead says whether it was dead before. A probe the caller gave up on
// says nothing of the cache: end it with abandon instead.
func (b *breaker) probed(err error) (wait time.Duration, wasDead bool) {
	b.endProbe()
	wasDead = b.dead != nil
	if err != nil {
		return b.skip(err), wasDead
	}
	b.reached = true
	if wasDead {
		b.revived = b.clock()
	}
	b.dead = nil
	return 0, wasDead
}

// abandon ends the probe enter granted with no answer: the next caller
// probes.
func (b *breaker) abandon() { b.endProbe() }

func (b *breaker) endProbe() {
	if b.probing != nil {
		close(b.probing)
		b.probing = nil
	}
}

// trip makes the cache dead after a call failed and returns the wait;
// ok is false when it is dead already, and the failure adds nothing.
func (b *breaker) trip(err error) (wait time.Duration, ok bool) {
	if b.dead != nil {
		return 0, false
	}
	return b.skip(err), true
}

// skip marks the cache dead for err until its next wait is over and
// returns that wait: the first is backoff, each next one twice the last,
// at most its ceiling; a cache that answered for reprobeMax since it last
// came back starts again from the first.
func (b *breaker) skip(err error) time.Duration {
	now := b.clock()
	if !b.revived.IsZero() && now.Sub(b.revived) >= reprobeMax {
		b.wait = 0
	}
	switch {
	case b.wait == 0 && b.backoff > 0:
		b.wait = b.backoff
	case b.wait == 0:
		b.wait = reprobeMin
	default:
		b.wait = min(2*b.wait, b.longest())
	}
	b.dead, b.retryAt = err, now.Add(b.wait)
	return b.wait
}

// longest is the longest wait.
func (b *breaker) longest() time.Duration {
	if b.ceiling > 0 {
		return b.ceiling
	}
	return reprobeMax
}
