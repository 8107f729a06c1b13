package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/bst-cache/bst-cache/remotes"
)

// Events receive what a transfer reports while it runs. Any field may be
// nil. They are called from several goroutines.
type Events struct {
	// OnWarn gets one line per problem that does not fail the run.
	OnWarn func(msg string)
	// OnPlan gets bytes added to what the run has to move, as trees
	// become known: before any of them is reported moved.
	OnPlan func(n int64)
	// OnBytes gets bytes as they move: a streamed blob chunk by chunk, a
	// batch once it is in.
	OnBytes func(n int64)
	// OnRef gets each ref's result as it completes.
	OnRef func(Result)
	// OnInfo gets detail worth showing with -v: each retry.
	OnInfo func(msg string)
}

// bind returns ctx carrying e for the remote layer: the retries and size
// refusals of calls made with it are told to e, whoever dialled the cache.
// Every Engine method that asks caches binds its Events first.
func (e Events) bind(ctx context.Context) context.Context {
	return remotes.WithHooks(ctx, remotes.Hooks{
		OnShrink: func(s remotes.ShrinkEvent) {
			e.Warn(fmt.Sprintf("cache %s (%s) refused a message as larger than its limit: %s size now %d bytes for the rest of this run", s.Cache, s.URL, s.What, s.Size))
		},
		OnRetry: func(r remotes.RetryEvent) {
			var re *remotes.Error
			code := "?"
			if errors.As(r.Err, &re) {
				code = re.Code.String()
			}
			e.info(fmt.Sprintf("cache %s: %s: %s; retry %d in %s", r.Cache, r.Op, code, r.Attempt, r.Delay.Round(time.Millisecond)))
		},
	})
}

func (e Events) info(msg string) {
	if e.OnInfo != nil {
		e.OnInfo(msg)
	}
}

// Warn reports a warning.
func (e Events) Warn(msg string) {
	if e.OnWarn != nil {
		e.OnWarn(msg)
	}
}

func (e Events) bytes(n int64) {
	if e.OnBytes != nil {
		e.OnBytes(n)
	}
}

func (e Events) plan(n int64) {
	if e.OnPlan != nil && n > 0 {
		e.OnPlan(n)
	}
}

// countingWriter calls on with the size of every write.
type countingWriter struct {
	w  io.Writer
	on func(int64)
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.on(int64(n))
	return n, err
}

// countingFile calls on with the size of every read. It seeks, so a
// resumed upload skips what the target holds without reading it.
type countingFile struct {
	*os.File
	on func(int64)
}

// Seek skips bytes the target already holds: progress counts them as
// done.
func (c countingFile) Seek(off int64, whence int) (int64, error) {
	pos, err := c.File.Seek(off, whence)
	if err == nil && whence == io.SeekStart {
		c.on(off)
	}
	return pos, err
}

func (c countingFile) Read(p []byte) (int, error) {
	n, err := c.File.Read(p)
	c.on(int64(n))
	return n, err
}

func (e Events) ref(r Result) {
	if e.OnRef != nil {
		e.OnRef(r)
	}
}
