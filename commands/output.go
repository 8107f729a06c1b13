package commands

import (
	"encoding/json"
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

func (o *output) warn(msg string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.warnings = append(o.warnings, msg)
}

// write prints the document when --json was given and the command has a
// result or failed; commands without results (serve, completion) print
// none on success.
func (o *output) write(w io.Writer, err error, code int) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.json || o.result == nil && err == nil {
		return nil
	}
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
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

// writeJSON makes result and counts the command's JSON document, which
// Main prints when the command returns.
func writeJSON(e *env, result any, counts map[string]int) {
	e.out.setResult(result, counts)
}
