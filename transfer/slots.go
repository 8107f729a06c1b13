package transfer

import (
	"context"
	"sync"
)

// lookaheadPerJob is how many refs may be asked about (index lookups,
// FindMissingBlobs, local checks) per ref that moves bytes. Asking costs
// round trips, not bandwidth or memory to speak of: on a link with 40 ms
// round trips a no-op copy of 1,000 refs is bound by how many are asked
// at once, while bytes are bound by the link whatever the number of refs.
const lookaheadPerJob = 32

// maxLookahead caps the refs in flight whatever --jobs says.
const maxLookahead = 1024

// lookahead is how many refs a run works on at once: --jobs times
// lookaheadPerJob, at most maxLookahead.
func (e *Engine) lookahead() int {
	return min(max(e.Jobs, 1)*lookaheadPerJob, maxLookahead)
}

// slots hand out the right to move bytes to --jobs refs at a time.
type slots chan struct{}

func newSlots(jobs int) slots { return make(slots, max(jobs, 1)) }

// slot is one ref's claim on a run's slots: taken the first time the ref
// has bytes to move, kept until the ref is done. It is safe for the ref's
// concurrent fetches; a nil slot never waits.
type slot struct {
	of   slots
	mu   sync.Mutex
	held bool
}

// take takes the slot unless the ref holds it, and says whether it had
// to wait for one.
func (s *slot) take(ctx context.Context) (waited bool, err error) {
	if s == nil {
		return false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held {
		return false, nil
	}
	select {
	case s.of <- struct{}{}:
		s.held = true
		return false, nil
	default:
	}
	select {
	case s.of <- struct{}{}:
		s.held = true
		return true, nil
	case <-ctx.Done():
		return true, ctx.Err()
	}
}

// release gives the slot back if it was taken; it may be called again.
func (s *slot) release() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held {
		<-s.of
		s.held = false
	}
}

// moved says whether the ref took its slot: it had bytes to move.
func (s *slot) moved() bool {
	if s == nil {
		return true // unknown: assume it did
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held
}
