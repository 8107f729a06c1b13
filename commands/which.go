package commands

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/spool"
	"github.com/bst-cache/bst-cache/internal/words"
	"github.com/bst-cache/bst-cache/transfer"
)

func whichCommand() *cli.Command {
	return &cli.Command{
		Name:      "which",
		Usage:     "tell which caches hold each ref: present, absent, incomplete or error, with the digest",
		ArgsUsage: "REF... (- reads refs from stdin)",
		Description: "One row per ref, one column per cache: yes (complete there), no (absent),\n" +
			"part:N (N blobs missing), ERR (could not ask: the error is printed once below),\n" +
			"- (no index for these refs). With no format set, yes and part say which\n" +
			"BuildStream's artifact the cache holds: yes (bst1). Digests are shown only\n" +
			"where caches disagree. In non-strict mode (--no-strict), an element whose\n" +
			"strict ref no cache holds is followed by its weak ref's row, what a\n" +
			"non-strict pull fetches, and counts as held when that is. On\n" +
			"a terminal long refs are shortened in the middle; never in pipes or --json.",
		Flags: append(refFlags(),
			&cli.StringSliceFlag{Name: "cache", Usage: "ask only this cache (repeatable)"},
			nonStrictFlag(),
		),
		Action: func(c *cli.Context) error {
			e, kind, args, err := readingEnv(c)
			if err != nil {
				return err
			}
			pl := newPool(e.cfg)
			defer pl.close()
			caches := pl.all
			if names := c.StringSlice("cache"); len(names) > 0 {
				for _, n := range names {
					if _, ok := e.cfg.Cache(n); !ok {
						return noCache(e.cfg, n)
					}
				}
				caches = pl.named(names)
			}
			eng, err := engine(c, e, kind, pl, caches, &progress{})
			if err != nil {
				return err
			}
			// A batch of refs at a time: the rows go to a spool
			// (whichTable), or into the JSON document as they come.
			sums := map[string]int{transfer.Present: 0, transfer.Missing: 0, transfer.Failed: 0}
			table := newWhichTable(kind == cache.KindArtifact)
			asked, streamed := 0, false
			err = args.each(c, eng, func(refs []string) error {
				asked += len(refs)
				locs := eng.Which(c.Context, refs, args.weak)
				if err := c.Context.Err(); err != nil {
					return err
				}
				for i := range locs {
					locs[i].Element = args.elements[locs[i].Ref]
				}
				addSums(sums, locs)
				if !e.json {
					return table.add(locs)
				}
				if !streamed {
					if err := e.out.stream(e.stdout, "result", []transfer.Location{}); err != nil {
						return err
					}
					streamed = true
				}
				for _, l := range locs {
					if err := e.out.item(l); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			if e.json {
				writeJSON(e, []transfer.Location{}, sums)
			} else if err := writeWhich(e, table); err != nil {
				return err
			}
			switch {
			case sums[transfer.Failed] > 0:
				return fmt.Errorf("which: %d of %s complete in no cache that answered, and a cache could not be asked", sums[transfer.Failed], words.IsAre(asked, "ref"))
			case sums[transfer.Missing] > 0:
				return refsMissing("which: %d of %s complete in no cache", sums[transfer.Missing], words.IsAre(asked, "ref"))
			}
			return nil
		},
	}
}

// addSums counts locations by status. An element held by its weak key
// counts once, as held: its weak ref's location follows its own in the
// same call of Which.
func addSums(sums map[string]int, locs []transfer.Location) {
	weakStatus := map[string]string{}
	for _, l := range locs {
		if l.WeakOf != "" {
			weakStatus[l.WeakOf] = l.Status
		}
	}
	for _, l := range locs {
		switch {
		case l.WeakOf != "":
		case weakStatus[l.Ref] == transfer.Present:
			sums[transfer.Present]++
		default:
			sums[l.Status]++
		}
	}
}

func writeWhich(e *env, table *whichTable) error {
	width := 0
	if f, ok := e.stdout.(*os.File); ok {
		if w, _, err := term.GetSize(int(f.Fd())); err == nil {
			width = w
		}
	}
	w := bufio.NewWriter(e.stdout)
	if err := table.write(w, width); err != nil {
		return err
	}
	return w.Flush()
}

// whichTable lays locations out one row per ref, one column per cache,
// each cache's error once below. With width > 0 (a terminal) refs are
// shortened in the middle so that rows fit. With showKind (no format set),
// a cache's answer says which BuildStream's artifact it holds. Locations
// are added a batch at a time; the rows and the lines below them are
// spooled (internal/spool) until the table is written, once every
// column's width is known, so that a table of a million refs holds its
// widths and each cache's first error, not its rows.
type whichTable struct {
	showKind bool
	names    []string
	// rows: each row's element, ref and cells, joined by NULs (which no
	// ref, element name or cell holds); notes: the lines below them.
	rows, notes *spool.Strings
	errs        map[string]string
	errOrder    []string
	// Widths: of the refs, of the elements (0 when none was named),
	// of each cache's column.
	refWidth, elWidth int
	colWidths         []int
}

func newWhichTable(showKind bool) *whichTable {
	return &whichTable{showKind: showKind, rows: spool.New(0), notes: spool.New(0), errs: map[string]string{}, refWidth: len("REF")}
}

// add adds locations' rows.
func (t *whichTable) add(locs []transfer.Location) error {
	if len(locs) > 0 && t.names == nil {
		t.names = []string{}
		for _, s := range locs[0].Caches {
			t.names = append(t.names, s.Name)
			t.colWidths = append(t.colWidths, len(s.Name))
		}
	}
	for _, l := range locs {
		if l.Element != "" {
			// When the user named elements, each stands beside its ref.
			t.elWidth = max(t.elWidth, len("ELEMENT"), len(l.Element))
		}
		row := []string{dash(l.Element), l.Ref}
		for j, s := range l.Caches {
			cell := shortState(s, t.showKind)
			row = append(row, cell)
			t.colWidths[j] = max(t.colWidths[j], len(cell))
			if s.Status == transfer.WhereError && t.errs[s.Name] == "" {
				t.errs[s.Name] = s.Error
				t.errOrder = append(t.errOrder, s.Name)
			}
		}
		t.refWidth = max(t.refWidth, len(l.Ref))
		if err := t.rows.Add(strings.Join(row, "\x00")); err != nil {
			return err
		}
		if len(l.Refs) > 1 {
			if err := t.notes.Add(fmt.Sprintf("%s: also stored as %s\n", l.Ref, strings.Join(l.Refs[1:], ", "))); err != nil {
				return err
			}
		}
		if l.Note != "" {
			if err := t.notes.Add(fmt.Sprintf("%s: %s\n", l.Ref, l.Note)); err != nil {
				return err
			}
		}
	}
	return nil
}

// write writes the table on w, for a terminal width columns wide (0: not
// a terminal); nothing when no location was added.
func (t *whichTable) write(w io.Writer, width int) error {
	if t.rows.Len() == 0 {
		return nil
	}
	refWidth := t.refWidth
	if width > 0 {
		rest := 0
		if t.elWidth > 0 {
			rest = t.elWidth + 2
		}
		for _, w := range t.colWidths {
			rest += w + 2
		}
		refWidth = max(min(refWidth, width-rest-1), 20)
	}
	row := func(element, ref string, cols []string) {
		if t.elWidth > 0 {
			fmt.Fprintf(w, "%-*s  ", t.elWidth, element)
		}
		fmt.Fprintf(w, "%-*s", refWidth, middle(ref, refWidth))
		for j, c := range cols {
			fmt.Fprintf(w, "  %-*s", t.colWidths[j], c)
		}
		fmt.Fprintln(w)
	}
	row("ELEMENT", "REF", t.names)
	if err := t.rows.Each(func(_ int, r string) error {
		cells := strings.Split(r, "\x00")
		row(cells[0], cells[1], cells[2:])
		return nil
	}); err != nil {
		return err
	}
	if err := t.notes.Each(func(_ int, line string) error {
		_, err := io.WriteString(w, line)
		return err
	}); err != nil {
		return err
	}
	for _, n := range t.errOrder {
		if _, err := fmt.Fprintf(w, "%s: %s\n", n, t.errs[n]); err != nil {
			return err
		}
	}
	return nil
}

// shortState is one cache's answer in a few letters, with the format of
// what it holds when showKind.
func shortState(s transfer.CacheState, showKind bool) string {
	kind := ""
	if showKind && s.Kind != "" {
		kind = " (" + strings.TrimSuffix(string(s.Kind), "-artifact") + ")"
	}
	switch s.Status {
	case transfer.WherePresent:
		return "yes" + kind
	case transfer.WhereAbsent:
		return "no"
	case transfer.WhereIncomplete:
		return fmt.Sprintf("part:%d", s.Missing) + kind
	case transfer.WhereError:
		return "ERR"
	}
	return "-"
}

// middle shortens s to width by cutting its middle ("demo/hello/1d89…a2c3").
func middle(s string, width int) string {
	if len(s) <= width || width < 5 {
		return s
	}
	keep := width - 1
	return s[:keep-keep/3] + "…" + s[len(s)-keep/3:]
}
