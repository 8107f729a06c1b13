package commands

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/urfave/cli/v2"
)

// envelope is the one JSON document every command prints with --json:
// the command, its result, its counts (zeros included), the warnings of
// the run, and when it failed the error and exit code. Main writes it once
// the command has returned, so the exit code is known.
type envelope struct {
	Command  string         `json:"command"`
	Result   any            `json:"result"`
	Counts   map[string]int `json:"counts"`
	Warnings []string       `json:"warnings"`
	Error    string         `json:"error,omitempty"`
	ExitCode int            `json:"exit_code"`
}

// output gathers what one run reports for its JSON document. Commands
// set the result; warnings come from any goroutine.
type output struct {
	mu       sync.Mutex
	json     bool
	command  string
	result   any
	counts   map[string]int
	warnings []string
	// streamed, once a command streams an array of its result (stream):
	// the document is written up to it, and write writes the rest.
	streamed *jsonStream
}

// jsonStream is an array of the JSON document written as it comes.
type jsonStream struct {
	w      *bufio.Writer
	key    string // of the array
	indent string // of the array's key
	items  int
}

const outputKey = "output"

// outputOf is the run's output, kept in the app's metadata.
func outputOf(app *cli.App) *output { return app.Metadata[outputKey].(*output) }

// setResult records the command's result and counts for the document.
func (o *output) setResult(result any, counts map[string]int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.result, o.counts = result, counts
}

// stream starts writing the document on w up to the array named key in
// result (its shape: that array empty, and first in the document after
// the command). Items follow as they come (item), and write writes the
// rest once the command has returned: the same document, byte for byte,
// without holding the array. A command's result of a million refs then
// costs no memory.
func (o *output) stream(w io.Writer, key string, result any) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.result = result
	doc, at, err := o.document(nil, 0, key)
	if err != nil {
		return err
	}
	line := bytes.LastIndexByte(doc[:at], '\n') + 1
	o.streamed = &jsonStream{w: bufio.NewWriter(w), key: key, indent: string(doc[line:at])}
	_, err = o.streamed.w.Write(doc[:at+len(fmt.Sprintf("%q: [", key))])
	return err
}

// item writes the next item of the streamed array.
func (o *output) item(v any) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.streamed
	b, err := json.MarshalIndent(v, s.indent+"  ", "  ")
	if err != nil {
		return err
	}
	if s.items > 0 {
		s.w.WriteByte(',')
	}
	s.items++
	s.w.WriteString("\n" + s.indent + "  ")
	_, err = s.w.Write(b)
	return err
}

func (o *output) warn(msg string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.warnings = append(o.warnings, msg)
}

// write prints the document when --json was given and the command has a
// result or failed; commands without results (serve, completion) print
// none on success. A streamed document gets what follows its array.
func (o *output) write(w io.Writer, err error, code int) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.json || o.result == nil && err == nil {
		return nil
	}
	if s := o.streamed; s != nil {
		doc, at, derr := o.document(err, code, s.key)
		if derr != nil {
			return derr
		}
		rest := doc[at+len(fmt.Sprintf("%q: []", s.key)):]
		if s.items > 0 {
			s.w.WriteString("\n" + s.indent + "]")
		} else {
			s.w.WriteString("]")
		}
		s.w.Write(rest)
		return s.w.Flush()
	}
	doc, _, derr := o.document(err, code, "")
	if derr != nil {
		return derr
	}
	_, werr := w.Write(doc)
	return werr
}

// document is the JSON document, and where in it the array named key
// begins (its key's quote).
func (o *output) document(err error, code int, key string) ([]byte, int, error) {
	doc := envelope{Command: o.command, Result: o.result, Counts: o.counts, Warnings: o.warnings, ExitCode: code}
	if doc.Counts == nil {
		doc.Counts = map[string]int{}
	}
	if doc.Warnings == nil {
		doc.Warnings = []string{}
	}
	if err != nil {
		doc.Error = err.Error()
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return nil, 0, err
	}
	if key == "" {
		return b.Bytes(), 0, nil
	}
	return b.Bytes(), bytes.Index(b.Bytes(), []byte(fmt.Sprintf("%q: [", key))), nil
}

// writeJSON makes result and counts the command's JSON document, which
// Main prints when the command returns.
func writeJSON(e *env, result any, counts map[string]int) {
	e.out.setResult(result, counts)
}
