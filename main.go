// Command bst-cache pulls, pushes and copies BuildStream artifacts across a
// named, ordered list of remote caches. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/bst-cache/bst-cache/commands"
	"github.com/bst-cache/bst-cache/config"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	quietGlog()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := commands.NewApp(version, os.Stdout, os.Stderr).RunContext(ctx, os.Args)
	stop()
	if err != nil {
		printError(os.Stderr, err)
	}
	os.Exit(exitCode(err))
}

// exitCode maps an error to the exit codes every command shares.
func exitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, commands.ErrUsage), errors.Is(err, config.ErrInvalid):
		return 2
	case errors.Is(err, commands.ErrRefsMissing):
		return 3
	case errors.Is(err, context.Canceled):
		return 130
	}
	return 1
}

// printError prints an error once, the way every command's errors look.
func printError(w io.Writer, err error) {
	fmt.Fprintf(w, "bst-cache: error: %v\n", err)
	if errors.Is(err, commands.ErrUsage) {
		fmt.Fprintln(w, "bst-cache: hint: see bst-cache --help")
	}
}

// quietGlog keeps the glog package, which remote-apis-sdks imports, from
// writing log files into $TMPDIR. Its flags live on the standard flag set,
// which the command line never parses, so they stay out of --help.
func quietGlog() {
	if f := flag.Lookup("logtostderr"); f != nil {
		_ = f.Value.Set("true")
	}
	if f := flag.Lookup("stderrthreshold"); f != nil {
		_ = f.Value.Set("FATAL")
	}
}
