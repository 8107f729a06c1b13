package transfer

import "io"

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

// countingReader calls on with the size of every read.
type countingReader struct {
	io.ReadCloser
	on func(int64)
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.on(int64(n))
	return n, err
}

func (e Events) ref(r Result) {
	if e.OnRef != nil {
		e.OnRef(r)
	}
}
