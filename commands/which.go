package commands

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/transfer"
)

func whichCommand() *cli.Command {
	return &cli.Command{
		Name:      "which",
		Usage:     "tell which caches hold each ref: present, absent, incomplete or error, with the digest",
		ArgsUsage: "REF... (- reads refs from stdin)",
		Flags:     refFlags(),
		Action: func(c *cli.Context) error {
			e, kind, args, err := readingEnv(c)
			if err != nil {
				return err
			}
			pl := newPool(e.cfg)
			defer pl.close()
			eng, err := engine(c, e, kind, pl, pl.all, &progress{})
			if err != nil {
				return err
			}
			refs, err := args.expand(c, eng)
			if err != nil {
				return err
			}
			locs := eng.Which(c.Context, refs)
			if err := c.Context.Err(); err != nil {
				return err
			}
			if e.json {
				if err := writeJSON(e, locs); err != nil {
					return err
				}
			} else {
				writeWhich(e, locs)
			}
			sums := map[string]int{}
			for _, l := range locs {
				sums[l.Status]++
			}
			switch {
			case sums[transfer.Failed] > 0:
				return fmt.Errorf("which: %d of %s complete in no cache that answered, and a cache could not be asked", sums[transfer.Failed], isAre(len(refs), "ref"))
			case sums[transfer.Missing] > 0:
				return fmt.Errorf("which: %d of %s complete in no cache: %w", sums[transfer.Missing], isAre(len(refs), "ref"), ErrRefsMissing)
			}
			return nil
		},
	}
}

func writeWhich(e *env, locs []transfer.Location) {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REF\tCACHE\tSTATUS\tDIGEST\tDETAIL")
	for _, l := range locs {
		for _, s := range l.Caches {
			detail := s.Error
			if s.Status == transfer.WhereIncomplete {
				detail = fmt.Sprintf("%d blobs missing", s.Missing)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", l.Ref, s.Name, s.Status, dash(s.Digest), detail)
		}
		if len(l.Refs) > 1 {
			fmt.Fprintf(tw, "%s\t\tnote\t\talso stored as %s\n", l.Ref, strings.Join(l.Refs[1:], ", "))
		}
		if l.Note != "" {
			fmt.Fprintf(tw, "%s\t\tnote\t\t%s\n", l.Ref, l.Note)
		}
	}
	tw.Flush()
}
