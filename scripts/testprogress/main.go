// Command testprogress turns `go test -json` into what go test prints,
// plus a line as each package starts, so a long run shows where it is:
//
//	go test -json ./... | go run ./scripts/testprogress
//
// It keeps go test's own lines: each package's closing "ok" or "FAIL"
// line, build errors, and the output of tests that fail (that of tests
// that pass is dropped, as without -v). It ends with a summary: packages
// passed and failed, and the failed tests. Lines that are not JSON pass
// through. The exit status is go test's, through the shell's pipefail.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/bst-cache/bst-cache/internal/words"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output events
}

func main() {
	if err := format(os.Stdin, os.Stdout, time.Now); err != nil {
		fmt.Fprintln(os.Stderr, "testprogress:", err)
		os.Exit(1)
	}
}

type key struct{ pkg, test string }

// format reads events from r and writes the text to w.
func format(r io.Reader, w io.Writer, now func() time.Time) error {
	start := now()
	held := map[key][]string{} // a running test's output, shown if it fails
	var passed, failed []string
	var failedTests []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			fmt.Fprintf(w, "%s\n", line)
			continue
		}
		k := key{ev.Package, ev.Test}
		switch {
		case ev.Action == "build-output":
			fmt.Fprint(w, ev.Output)
		case ev.Action == "start" && ev.Test == "":
			fmt.Fprintf(w, "   running %s (%s)\n", ev.Package, now().Sub(start).Round(time.Second))
		case ev.Test == "" && ev.Action == "output":
			if ev.Output != "PASS\n" {
				fmt.Fprint(w, ev.Output)
			}
		case ev.Test == "" && ev.Action == "pass":
			passed = append(passed, ev.Package)
		case ev.Test == "" && ev.Action == "fail":
			// Tests cut short (a panic, the timeout) never ended: show
			// what they printed.
			for k, out := range held {
				if k.pkg == ev.Package {
					fmt.Fprint(w, strings.Join(out, ""))
					delete(held, k)
				}
			}
			failed = append(failed, ev.Package)
		case ev.Action == "output":
			if !strings.HasPrefix(ev.Output, "=== ") { // RUN, PAUSE, CONT: -v's, not go test's
				held[k] = append(held[k], ev.Output)
			}
		case ev.Action == "fail":
			fmt.Fprint(w, strings.Join(held[k], ""))
			delete(held, k)
			failedTests = append(failedTests, ev.Package+" "+ev.Test)
		case ev.Action == "pass" || ev.Action == "skip":
			delete(held, k)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%s ok, %d failed; %s\n", words.Plural(len(passed), "package"), len(failed), now().Sub(start).Round(time.Second))
	for _, t := range failedTests {
		fmt.Fprintf(w, "FAIL %s\n", t)
	}
	return nil
}
