package commands

import (
	"bytes"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is written by the bar's own render goroutine while the test
// reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// The bar's time left comes from a settled total: while trees are still
// being read (the total grows) it shows none, since remaining/rate over a
// partial total is too short; once the total has held for settle it shows
// the rest at the rate since the first byte.
func TestTimeLeftFromSettledTotal(t *testing.T) {
	clock := time.Unix(1e9, 0)
	tick := func(d time.Duration) { clock = clock.Add(d) }
	var out lockedBuffer
	p := newBar(&out, "pull", func() time.Time { return clock })
	p.expect(2)
	const mib = 1 << 20
	p.plan(100 * mib)
	tick(time.Second)
	p.add(10 * mib)
	tick(time.Second)
	p.plan(100 * mib) // the second ref's tree: the total grows
	p.add(10 * mib)
	if d := p.describe(); strings.Contains(d, "left") {
		t.Errorf("while the total grows the bar says %q; want no time left", d)
	}
	tick(settle)
	p.add(10 * mib)
	// 30 MiB since the first byte 1s+settle ago; 170 MiB to go.
	rate := 30 / (time.Second + settle).Seconds()
	want := time.Duration(170 / rate * float64(time.Second)).Round(time.Second)
	if d := p.describe(); !strings.HasSuffix(d, ", "+want.String()+" left") {
		t.Errorf("with a settled total the bar says %q; want %s left", d, want)
	}
	if regexp.MustCompile(`\[\d+s:\d+s\]`).MatchString(out.String()) {
		t.Errorf("the bar still shows its own time left, from a growing total: %q", out.String())
	}
}
