package commands

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/google/uuid"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/remotes"
)

// Exit codes shared by every command.
const (
	ExitOK          = 0
	ExitFailure     = 1   // network, auth, integrity, I/O
	ExitUsage       = 2   // usage or configuration error
	ExitRefsMissing = 3   // one or more refs found in no cache
	ExitInterrupted = 130 // Ctrl-C (SIGINT)
	ExitTerminated  = 143 // SIGTERM
)

// Main runs the command line with args (args[0] is the program name),
// prints any error once on stderr, and returns the exit code.
func Main(ctx context.Context, version string, args []string, stdout, stderr io.Writer) int {
	stdout, stderr = serialized(stdout), serialized(stderr)
	app := NewApp(version, stdout, stderr)
	if words, cur, ok := completionRequest(args); ok {
		for _, w := range complete(app, words, cur) {
			fmt.Fprintln(stdout, w)
		}
		return ExitOK
	}
	// Every call names this run to the caches (REAPI RequestMetadata).
	ctx = remotes.WithTool(ctx, remotes.Tool{Name: "bst-cache", Version: version, Invocation: uuid.NewString()})
	err := app.RunContext(ctx, reorder(app, args))
	code := ExitCode(err)
	if code == ExitInterrupted && errors.Is(context.Cause(ctx), ErrTerminated) {
		code = ExitTerminated
	}
	if err != nil {
		printError(stderr, err, code)
	}
	if werr := outputOf(app).write(stdout, err, code); werr != nil && code == ExitOK {
		printError(stderr, werr, ExitFailure)
		code = ExitFailure
	}
	return code
}

// ErrTerminated is the cause a run's context is cancelled with on SIGTERM
// (exit 143; any other cancellation is an interrupt, exit 130).
var ErrTerminated = errors.New("terminated")

// ExitCode maps an error to an exit code.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrUsage), errors.Is(err, config.ErrInvalid):
		return ExitUsage
	case errors.Is(err, ErrRefsMissing):
		return ExitRefsMissing
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	}
	return ExitFailure
}

// serialized makes w safe for the engine's goroutines to write whole
// lines to. An *os.File already is (each Write is one system call under
// the file's own lock) and stays as it is, so a terminal is still seen as
// one; anything else, such as a test's buffer, gets a mutex.
func serialized(w io.Writer) io.Writer {
	if _, ok := w.(*os.File); ok {
		return w
	}
	return &lockedWriter{w: w}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// printError prints err once. A run stopped by Ctrl-C or SIGTERM says so,
// not Go's "context canceled".
func printError(w io.Writer, err error, code int) {
	msg := err.Error()
	if errors.Is(err, context.Canceled) {
		stop := "interrupted"
		if code == ExitTerminated {
			stop = "terminated"
		}
		msg = strings.ReplaceAll(msg, context.Canceled.Error(), stop)
	}
	fmt.Fprintf(w, "bst-cache: error: %s\n", msg)
	if errors.Is(err, ErrUsage) {
		fmt.Fprintln(w, "bst-cache: hint: see bst-cache --help")
	}
}
