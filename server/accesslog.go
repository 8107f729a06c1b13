package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// AccessLog writes one JSON line per call (serve --access-log). Lines go
// through a bounded queue to one writer goroutine, so a slow disk never
// holds up a call: when the queue is full a line is dropped and counted,
// and the next line written says how many were. It is safe for
// concurrent use.
type AccessLog struct {
	path    string // "-": standard output, never reopened
	lines   chan []byte
	reopen  chan chan error
	stop    chan struct{}
	stopped chan error
	dropped atomic.Int64
	closing sync.Once
}

// AccessLogQueue is how many lines wait for the writer before more are
// dropped.
const AccessLogQueue = 8192

// accessLine is one line of the access log. Times are UTC, RFC 3339 with
// milliseconds; only the fields a call has are written.
type accessLine struct {
	Time       string   `json:"time"`
	Peer       string   `json:"peer,omitempty"`
	Method     string   `json:"method,omitempty"`
	Instance   *string  `json:"instance,omitempty"`
	Code       string   `json:"code,omitempty"`
	BytesIn    *int64   `json:"bytes_in,omitempty"`
	BytesOut   *int64   `json:"bytes_out,omitempty"`
	DurationMS *float64 `json:"duration_ms,omitempty"`
	Refs       []string `json:"refs,omitempty"`
	RefCount   int      `json:"ref_count,omitempty"`
	Asked      *int     `json:"digests_asked,omitempty"`
	Missing    *int     `json:"digests_missing,omitempty"`
	Tool       string   `json:"tool,omitempty"`
	ToolVer    string   `json:"tool_version,omitempty"`
	Invocation string   `json:"invocation_id,omitempty"`
	Error      string   `json:"error,omitempty"`
	Dropped    int64    `json:"dropped_lines,omitempty"`
}

const findMissing = "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"

func timestamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }

// OpenAccessLog appends to path ("-": standard output).
func OpenAccessLog(path string) (*AccessLog, error) {
	w, err := openLog(path)
	if err != nil {
		return nil, err
	}
	l := &AccessLog{
		path: path, lines: make(chan []byte, AccessLogQueue), reopen: make(chan chan error),
		stop: make(chan struct{}), stopped: make(chan error, 1),
	}
	go l.write(w)
	return l, nil
}

func openLog(path string) (io.WriteCloser, error) {
	if path == "-" {
		return nopCloser{os.Stdout}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("access log: %w", err)
	}
	return f, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// Log queues the line for c; it never waits.
func (l *AccessLog) Log(c *Call) {
	line := accessLine{
		Time: timestamp(c.Start), Peer: c.Peer, Method: c.Method, Instance: &c.Instance,
		Code: c.Code.String(), BytesIn: &c.BytesIn, BytesOut: &c.BytesOut,
		Refs: c.Refs, RefCount: c.RefCount,
		Tool: c.Tool, ToolVer: c.ToolVersion, Invocation: c.Invocation, Error: c.Message,
	}
	ms := float64(c.Duration.Microseconds()) / 1000
	line.DurationMS = &ms
	if c.Method == findMissing {
		line.Asked, line.Missing = &c.Asked, &c.Missing
	}
	b, err := json.Marshal(line)
	if err != nil {
		return // not with these field types
	}
	select {
	case l.lines <- append(b, '\n'):
	default:
		l.dropped.Add(1)
	}
}

// Reopen closes the file and opens path again: after logrotate renamed
// it, lines go to a new file. Every line queued before is written to
// the old one first. Standard output is not reopened.
func (l *AccessLog) Reopen() error {
	if l.path == "-" {
		return nil
	}
	done := make(chan error, 1)
	select {
	case l.reopen <- done:
		return <-done
	case <-l.stop:
		return nil
	}
}

// Close writes what is queued and closes the file. Lines logged after
// are dropped.
func (l *AccessLog) Close() error {
	l.closing.Do(func() { close(l.stop) })
	return <-l.stopped
}

// write is the writer goroutine: it batches lines into one buffer,
// flushed whenever the queue is empty.
func (l *AccessLog) write(w io.WriteCloser) {
	buf := bufio.NewWriterSize(w, 64<<10)
	var werr error // the first write error since the file was opened
	raw := func(b []byte) {
		if _, err := buf.Write(b); err != nil && werr == nil {
			werr = err
		}
	}
	// sayDropped writes how many lines were dropped since it last did.
	sayDropped := func() {
		if n := l.dropped.Swap(0); n > 0 {
			d, _ := json.Marshal(accessLine{Time: timestamp(time.Now()), Dropped: n,
				Error: fmt.Sprintf("the access log fell behind: %d lines dropped", n)})
			raw(append(d, '\n'))
		}
	}
	put := func(b []byte) {
		sayDropped()
		raw(b)
	}
	flush := func() {
		if err := buf.Flush(); err != nil && werr == nil {
			werr = err
		}
	}
	for {
		select {
		case b := <-l.lines:
			put(b)
			if len(l.lines) == 0 {
				flush()
			}
		case done := <-l.reopen:
			flush()
			nw, err := openLog(l.path)
			if err != nil {
				done <- fmt.Errorf("reopening %s (still writing to the file open before): %w", l.path, err)
				continue
			}
			w.Close()
			w = nw
			buf.Reset(w)
			done <- werr
			werr = nil
		case <-l.stop:
			for len(l.lines) > 0 {
				put(<-l.lines)
			}
			sayDropped()
			flush()
			if err := w.Close(); err != nil && werr == nil {
				werr = err
			}
			if werr != nil {
				werr = fmt.Errorf("access log %s: %w", l.path, werr)
			}
			l.stopped <- werr
			close(l.stopped)
			return
		}
	}
}
