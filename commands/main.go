package commands

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/bst-cache/bst-cache/config"
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
	app := NewApp(version, stdout, stderr)
	err := app.RunContext(ctx, reorder(app, args))
	code := ExitCode(err)
	if code == ExitInterrupted && errors.Is(context.Cause(ctx), ErrTerminated) {
		code = ExitTerminated
	}
	if err != nil {
		printError(stderr, err)
	}
	if werr := outputOf(app).write(stdout, err, code); werr != nil && code == ExitOK {
		printError(stderr, werr)
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

func printError(w io.Writer, err error) {
	fmt.Fprintf(w, "bst-cache: error: %v\n", err)
	if errors.Is(err, ErrUsage) {
		fmt.Fprintln(w, "bst-cache: hint: see bst-cache --help")
	}
}
