package commands

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/bst-cache/bst-cache/transfer"
)

// which fits 100 columns for three caches with bst-length refs on a
// terminal (refs shortened in the middle), never shortens in pipes, and
// prints each cache's error once.
func TestWhichTableFits(t *testing.T) {
	ref := "freedesktop-sdk/components-gstreamer-plugins-good/" + strings.Repeat("9c", 32)
	states := []transfer.CacheState{
		{Name: "latest", Status: transfer.WherePresent, Digest: "d1"},
		{Name: "releases", Status: transfer.WhereIncomplete, Missing: 12},
		{Name: "offline-mirror", Status: transfer.WhereError, Error: "cache offline-mirror (http://x): unreachable"},
	}
	locs := []transfer.Location{{Ref: ref, Caches: states}, {Ref: ref + "x", Caches: states}}
	table := layOut(t, locs, 100)
	for _, line := range strings.Split(strings.TrimSpace(table), "\n")[:3] {
		if n := utf8.RuneCountInString(line); n > 100 {
			t.Errorf("%d columns: %q", n, line)
		}
	}
	if !strings.Contains(table, "yes") || !strings.Contains(table, "part:12") || strings.Count(table, "unreachable") != 1 || !strings.Contains(table, "…") {
		t.Errorf("table:\n%s", table)
	}
	if piped := layOut(t, locs, 0); !strings.Contains(piped, ref) {
		t.Errorf("a piped table shortened the ref:\n%s", piped)
	}
}

// layOut is the which table of locs, a batch at a time, for a terminal
// width columns wide (0: a pipe).
func layOut(t *testing.T, locs []transfer.Location, width int) string {
	t.Helper()
	table := newWhichTable(false)
	for _, l := range locs {
		if err := table.add([]transfer.Location{l}); err != nil {
			t.Fatal(err)
		}
	}
	var b strings.Builder
	if err := table.write(&b, width); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
