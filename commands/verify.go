package commands

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/internal/words"
)

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "re-hash the local store's objects and check every ref's closure",
		ArgsUsage: "[REF|ELEMENT|GLOB...] (every ref and every object when none)",
		Description: "Reads every byte: each object refs reach (every object in the store when no\n" +
			"ref is given) is hashed again, and each ref's closure is checked. Corrupt and\n" +
			"missing objects are reported with the refs they break. With --repair, corrupt\n" +
			"objects are removed and the broken refs pulled again from the caches (priority\n" +
			"order, every byte checked); a ref no cache can complete is removed with all its\n" +
			"refs. Exit 1 when something is still wrong (or had to be removed).",
		Flags: append(refFlags(),
			&cli.BoolFlag{Name: "repair", Usage: "fetch bad or missing objects again from the caches; remove refs that cannot be completed"},
		),
		Action: func(c *cli.Context) error {
			e, kind, err := localEnv(c)
			if err != nil {
				return err
			}
			refs, everything, err := refsOrAll(c, e, kind)
			if err != nil {
				return err
			}
			// A bar on a terminal: verify reads every byte.
			p := newProgress(c, e, "verify")
			p.expect(len(refs))
			pl := newPool(e.cfg)
			defer pl.close()
			eng, err := engine(c, e, kind, pl, pl.all, p)
			if err != nil {
				return err
			}
			rep, err := eng.Verify(c.Context, refs, everything, c.Bool("repair"))
			p.finish()
			if err != nil {
				return err
			}
			if e.json {
				writeJSON(e, rep, map[string]int{"refs": rep.Refs, "objects": rep.Objects, "problems": len(rep.Problems), "unrepaired": rep.Unrepaired(), "refs_removed": len(rep.Removed)})
			} else {
				for _, pr := range rep.Problems {
					state := ""
					if pr.Repaired {
						state = " (repaired)"
					}
					breaks := "no ref"
					if len(pr.Refs) > 0 {
						breaks = strings.Join(pr.Refs, ", ")
					}
					fmt.Fprintf(e.stdout, "%s %s%s: breaks %s\n", pr.What, pr.Object, state, breaks)
				}
				for _, r := range rep.Removed {
					fmt.Fprintf(e.stdout, "removed %s\n", r)
				}
				fmt.Fprintf(e.stderr, "verify: %s, %s (%s) good; %s, %d still wrong, %s removed\n",
					words.Plural(rep.Refs, "ref"), words.Plural(rep.Objects, "object"), humanBytes(rep.Bytes), words.Plural(len(rep.Problems), "problem"), rep.Unrepaired(), words.Plural(len(rep.Removed), "ref"))
			}
			if n := rep.Unrepaired(); n > 0 || len(rep.Removed) > 0 {
				return fmt.Errorf("verify: %s not repaired, %s removed", words.Plural(n, "problem"), words.Plural(len(rep.Removed), "ref"))
			}
			return nil
		},
	}
}
