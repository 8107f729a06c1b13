package transfer

// Events receive what a transfer reports while it runs. Any field may be
// nil. They are called from several goroutines.
type Events struct {
	// OnWarn gets one line per problem that does not fail the run.
	OnWarn func(msg string)
	// OnBytes gets the size of each blob moved.
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

func (e Events) ref(r Result) {
	if e.OnRef != nil {
		e.OnRef(r)
	}
}
