package transfer

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// The rules of single flight, one sequence of claims and releases each.
func TestFlights(t *testing.T) {
	// A step: "claim K mine" / "claim K theirs" (and what the caller is
	// told), "release K..." (every waiter on those keys is let go, none
	// other), "held N" (keys still claimed).
	for _, tc := range []struct {
		name  string
		steps []string
	}{
		{"the first claims, the others wait", []string{
			"claim a mine", "claim a theirs", "claim a theirs", "claim b mine", "held 2",
			"release a", "held 1", "release b", "held 0",
		}},
		{"a waiter whose claimer failed claims it next", []string{
			"claim a mine", "claim a theirs", "release a", "claim a mine", "claim a theirs", "release a", "held 0",
		}},
		{"release of many, and of keys nobody claimed", []string{
			"claim a mine", "claim b mine", "claim c mine", "claim b theirs", "claim c theirs",
			"release a b c d", "held 0", "release a", "held 0", "claim b mine",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f flights[string]
			waiting := map[string][]<-chan struct{}{}
			for i, step := range tc.steps {
				var op, key, arg string
				fmt.Sscan(step, &op, &key, &arg)
				switch op {
				case "claim":
					mine, done := f.claim(key)
					if got := map[bool]string{true: "mine", false: "theirs"}[mine]; got != arg {
						t.Fatalf("step %d %q: %s", i, step, got)
					}
					if (done == nil) != mine {
						t.Fatalf("step %d %q: a wait channel %v for mine=%v", i, step, done, mine)
					}
					if !mine {
						waiting[key] = append(waiting[key], done)
					}
				case "release":
					keys := strings.Fields(step)[1:]
					f.release(keys...)
					for _, k := range keys {
						for _, ch := range waiting[k] {
							select {
							case <-ch:
							default:
								t.Fatalf("step %d %q: a waiter on %s was not let go", i, step, k)
							}
						}
						delete(waiting, k)
					}
					for k, chs := range waiting {
						for _, ch := range chs {
							select {
							case <-ch:
								t.Fatalf("step %d %q: a waiter on %s was let go", i, step, k)
							default:
							}
						}
					}
				case "held":
					f.mu.Lock()
					got := fmt.Sprint(len(f.m))
					f.mu.Unlock()
					if got != key {
						t.Fatalf("step %d %q: %s keys held", i, step, got)
					}
				default:
					t.Fatalf("step %d: unknown %q", i, step)
				}
			}
		})
	}
}

// Many workers wanting the same keys at once, as refs sharing blobs: each
// key's work runs one at a time; the first attempt at each fails, and a
// waiter takes it up and succeeds, so each key is worked on exactly twice;
// every worker finishes and no key is left held.
func TestFlightsConcurrent(t *testing.T) {
	const workers, keys = 16, 50
	var f flights[int]
	var mu sync.Mutex
	attempts, running, done := map[int]int{}, map[int]bool{}, map[int]bool{}
	isDone := func(k int) bool {
		mu.Lock()
		defer mu.Unlock()
		return done[k]
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*keys)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range keys {
				k := (i + w*7) % keys // workers start at different keys
				for tries := 0; !isDone(k); tries++ {
					if tries == 100 { // each key is through after two claims
						errs <- fmt.Errorf("key %d: never done", k)
						return
					}
					mine, wait := f.claim(k)
					if !mine {
						select {
						case <-wait:
						case <-time.After(30 * time.Second):
							errs <- fmt.Errorf("key %d: a waiter was never let go", k)
							return
						}
						continue
					}
					mu.Lock()
					if running[k] {
						errs <- fmt.Errorf("key %d worked on twice at once", k)
					}
					first := attempts[k] == 0
					if !done[k] {
						attempts[k]++
						running[k] = true
					}
					mu.Unlock()
					time.Sleep(time.Millisecond) // the work
					mu.Lock()
					running[k] = false
					if !first {
						done[k] = true // the first attempt fails
					}
					mu.Unlock()
					f.release(k)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for k := range keys {
		if attempts[k] != 2 || !done[k] {
			t.Errorf("key %d: %d attempts, done %v; want 2, the second done", k, attempts[k], done[k])
		}
	}
	if len(f.m) != 0 {
		t.Errorf("%d keys left held after every release", len(f.m))
	}
}
