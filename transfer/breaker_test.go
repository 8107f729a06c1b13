package transfer

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// The breaker's rules, one sequence of events each, on a clock of its
// own: what each caller is told, and how long a dead cache is skipped.
func TestBreaker(t *testing.T) {
	// A step is one event and what it must give:
	//   "enter ask|probe|await|skip": a caller asks whether to ask the cache;
	//   "ok" / "ok revived": the probe answered (revived: the cache was dead);
	//   "fail 5s" / "fail 5s dead": the probe failed, skipped for 5s
	//     (dead: it was dead already);
	//   "abandon": the prober gave up before an answer;
	//   "trip 5s" / "trip -": a call failed: skipped for 5s, or dead already;
	//   "after 5s": the clock moves on.
	for _, tc := range []struct {
		name    string
		backoff time.Duration
		steps   []string
	}{
		{"the first caller probes, the others wait for its answer", 0, []string{
			"enter probe", "enter await", "enter await", "ok", "enter ask", "enter ask",
		}},
		{"a cache that fails its first probe is skipped for reprobeMin", 0, []string{
			"enter probe", "enter await", "fail 5s", "enter skip", "after 4.9s", "enter skip",
			"after 100ms", "enter probe", "enter skip", "ok revived", "enter ask",
		}},
		{"the waits double up to reprobeMax", 0, []string{
			"enter probe", "fail 5s", "after 5s", "enter probe", "fail 10s dead",
			"after 10s", "enter probe", "fail 20s dead", "after 20s", "enter probe", "fail 40s dead",
			"after 40s", "enter probe", "fail 1m20s dead", "after 80s", "enter probe", "fail 2m0s dead",
			"after 2m", "enter probe", "fail 2m0s dead", "after 2m", "enter probe", "ok revived", "enter ask",
		}},
		{"a backoff set replaces reprobeMin", time.Second, []string{
			"enter probe", "fail 1s", "after 1s", "enter probe", "fail 2s dead",
		}},
		{"a call that fails trips a closed breaker once", 0, []string{
			"enter probe", "ok", "trip 5s", "enter skip", "trip -", "after 5s", "enter probe", "ok revived", "enter ask",
		}},
		{"a cache that dies again soon after it came back waits longer", 0, []string{
			"enter probe", "ok", "trip 5s", "after 5s", "enter probe", "ok revived",
			"after 119s", "trip 10s", "after 10s", "enter probe", "ok revived", "after 1m", "trip 20s",
		}},
		{"a cache that answered for reprobeMax starts again from the first wait", 0, []string{
			"enter probe", "ok", "trip 5s", "after 5s", "enter probe", "fail 10s dead", "after 10s",
			"enter probe", "ok revived", "after 2m", "trip 5s",
		}},
		{"a probe given up on: the next caller probes", 0, []string{
			"enter probe", "enter await", "abandon", "enter probe", "ok", "enter ask",
		}},
		{"a probe of a dead cache given up on: still dead, the next caller probes", 0, []string{
			"enter probe", "fail 5s", "after 5s", "enter probe", "enter skip", "abandon",
			"enter probe", "fail 10s dead", "enter skip",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Unix(1e9, 0)
			b := &breaker{backoff: tc.backoff, now: func() time.Time { return now }}
			var awaiting []<-chan struct{}
			for i, step := range tc.steps {
				var got string
				var op, arg string
				fmt.Sscan(step, &op, &arg)
				switch op {
				case "enter":
					d, ch, err := b.enter()
					got = "enter " + d.String()
					if (d == skipCache) != (err != nil) {
						t.Fatalf("step %d %q: %s with error %v", i, step, d, err)
					}
					if d == awaitProbe {
						awaiting = append(awaiting, ch)
					}
				case "ok":
					_, wasDead := b.probed(nil)
					got = "ok" + map[bool]string{true: " revived"}[wasDead]
				case "fail":
					wait, wasDead := b.probed(errors.New("down"))
					got = "fail " + wait.String() + map[bool]string{true: " dead"}[wasDead]
				case "abandon":
					b.abandon()
					got = "abandon"
				case "trip":
					wait, ok := b.trip(errors.New("down"))
					got = "trip -"
					if ok {
						got = "trip " + wait.String()
					}
				case "after":
					d, err := time.ParseDuration(arg)
					if err != nil {
						t.Fatal(err)
					}
					now = now.Add(d)
					got = step
				default:
					t.Fatalf("step %d: unknown %q", i, step)
				}
				if got != step {
					t.Fatalf("step %d: got %q, want %q (steps %q)", i, got, step, tc.steps[:i+1])
				}
				if op == "ok" || op == "fail" || op == "abandon" {
					// Whoever waited for the probe is let go.
					for _, ch := range awaiting {
						select {
						case <-ch:
						default:
							t.Fatalf("step %d %q: a caller waiting for the probe was not let go", i, step)
						}
					}
					awaiting = nil
				}
			}
		})
	}
}
