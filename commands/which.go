package commands

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/bst-cache/bst-cache/cache"
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
			refs, err := args.expand(c, eng)
			if err != nil {
				return err
			}
			locs := eng.Which(c.Context, refs, args.weak)
			if err := c.Context.Err(); err != nil {
				return err
			}
			for i := range locs {
				locs[i].Element = args.elements[locs[i].Ref]
			}
			sums := map[string]int{transfer.Present: 0, transfer.Missing: 0, transfer.Failed: 0}
			// An element held by its weak key counts once, as held.
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
			if e.json {
				writeJSON(e, locs, sums)
			} else {
				writeWhich(e, locs, kind == cache.KindArtifact)
			}
			switch {
			case sums[transfer.Failed] > 0:
				return fmt.Errorf("which: %d of %s complete in no cache that answered, and a cache could not be asked", sums[transfer.Failed], words.IsAre(len(refs), "ref"))
			case sums[transfer.Missing] > 0:
				return refsMissing("which: %d of %s complete in no cache", sums[transfer.Missing], words.IsAre(len(refs), "ref"))
			}
			return nil
		},
	}
}

func writeWhich(e *env, locs []transfer.Location, showKind bool) {
	width := 0
	if f, ok := e.stdout.(*os.File); ok {
		if w, _, err := term.GetSize(int(f.Fd())); err == nil {
			width = w
		}
	}
	fmt.Fprint(e.stdout, whichTable(locs, width, showKind))
}

// whichTable lays locations out one row per ref, one column per cache,
// each cache's error once below. With width > 0 (a terminal) refs are
// shortened in the middle so that rows fit. With showKind (no format set),
// a cache's answer says which BuildStream's artifact it holds.
func whichTable(locs []transfer.Location, width int, showKind bool) string {
	if len(locs) == 0 {
		return ""
	}
	var names []string
	for _, s := range locs[0].Caches {
		names = append(names, s.Name)
	}
	cells := make([][]string, len(locs))
	errs := map[string]string{}
	var errOrder []string
	refWidth := len("REF")
	// When the user named elements, each stands beside its ref.
	elWidth := 0
	for _, l := range locs {
		if l.Element != "" {
			elWidth = max(elWidth, len("ELEMENT"), len(l.Element))
		}
	}
	for i, l := range locs {
		for _, s := range l.Caches {
			cells[i] = append(cells[i], shortState(s, showKind))
			if s.Status == transfer.WhereError && errs[s.Name] == "" {
				errs[s.Name] = s.Error
				errOrder = append(errOrder, s.Name)
			}
		}
		refWidth = max(refWidth, len(l.Ref))
	}
	colWidths := make([]int, len(names))
	for j, n := range names {
		colWidths[j] = len(n)
		for i := range cells {
			colWidths[j] = max(colWidths[j], len(cells[i][j]))
		}
	}
	if width > 0 {
		rest := 0
		if elWidth > 0 {
			rest = elWidth + 2
		}
		for _, w := range colWidths {
			rest += w + 2
		}
		refWidth = max(min(refWidth, width-rest-1), 20)
	}
	var b strings.Builder
	row := func(element, ref string, cols []string) {
		if elWidth > 0 {
			fmt.Fprintf(&b, "%-*s  ", elWidth, element)
		}
		fmt.Fprintf(&b, "%-*s", refWidth, middle(ref, refWidth))
		for j, c := range cols {
			fmt.Fprintf(&b, "  %-*s", colWidths[j], c)
		}
		b.WriteString("\n")
	}
	row("ELEMENT", "REF", names)
	for i, l := range locs {
		row(dash(l.Element), l.Ref, cells[i])
	}
	for _, l := range locs {
		if len(l.Refs) > 1 {
			fmt.Fprintf(&b, "%s: also stored as %s\n", l.Ref, strings.Join(l.Refs[1:], ", "))
		}
		if l.Note != "" {
			fmt.Fprintf(&b, "%s: %s\n", l.Ref, l.Note)
		}
	}
	for _, n := range errOrder {
		fmt.Fprintf(&b, "%s: %s\n", n, errs[n])
	}
	return b.String()
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
