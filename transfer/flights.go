package transfer

import "sync"

// flights is single flight for work on keys (a blob downloaded, a blob
// sent to a target): the first caller to claim a key does the work and
// releases it; the others are given a channel closed once the claimer is
// through, whether or not it succeeded, and then look again (and claim
// the key when the work is still to do). Claims never wait, so callers
// that hold claims cannot deadlock through them. A key is held only
// while claimed. The zero value is ready; it is safe for concurrent use.
type flights[K comparable] struct {
	mu sync.Mutex
	m  map[K]chan struct{}
}

// claim makes the caller the worker on k, or returns a channel closed
// when the current worker is through.
func (f *flights[K]) claim(k K) (mine bool, done <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch, ok := f.m[k]; ok {
		return false, ch
	}
	if f.m == nil {
		f.m = map[K]chan struct{}{}
	}
	f.m[k] = make(chan struct{})
	return true, nil
}

// release ends the claims on ks, letting their waiters go; a key not
// claimed is ignored.
func (f *flights[K]) release(ks ...K) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range ks {
		if ch, ok := f.m[k]; ok {
			close(ch)
			delete(f.m, k)
		}
	}
}
