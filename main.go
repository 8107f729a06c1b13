// Command bst-cache pulls, pushes and copies BuildStream artifacts across a
// named, ordered list of remote caches. See README.md.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"github.com/bst-cache/bst-cache/commands"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	quietGlog()
	ctx, cancel := context.WithCancelCause(context.Background())
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-signals
		signal.Stop(signals) // a second Ctrl-C stops at once
		if sig == syscall.SIGTERM {
			cancel(commands.ErrTerminated)
			return
		}
		cancel(context.Canceled)
	}()
	stopProfiling := startProfiling()
	code := commands.Main(ctx, version, os.Args, os.Stdout, os.Stderr)
	stopProfiling()
	os.Exit(code)
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
