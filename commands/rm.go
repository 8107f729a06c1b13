package commands

import (
	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/internal/spool"
	"github.com/bst-cache/bst-cache/transfer"
)

func rmCommand() *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Usage:     "remove refs from the local store (their objects go at the next gc)",
		ArgsUsage: "REF|ELEMENT|GLOB... (- reads refs from stdin; a GLOB matches refs in the local store)",
		Description: "Removes each artifact with all its refs (its strong and its weak key's)\n" +
			"together. A ref not in the local store is reported missing (exit 3).",
		Flags: append(refFlags(),
			&cli.BoolFlag{Name: "dry-run", Usage: "report what would be removed and remove nothing"},
		),
		Action: func(c *cli.Context) error {
			e, kind, err := localEnv(c)
			if err != nil {
				return err
			}
			args, err := expandGlobs(c, e, kind)
			if err != nil {
				return err
			}
			pl := newPool(e.cfg)
			defer pl.close()
			eng, err := engine(c, e, kind, pl, nil, &progress{})
			if err != nil {
				return err
			}
			// A batch at a time; an artifact named by two refs in
			// different batches is removed once. The report starts with
			// the first batch: a --deps that cannot be followed fails
			// before it, as it did before any removal.
			var r *runReport
			report := func() error {
				if r == nil {
					r, err = newReport(c, e, &progress{}, "rm", len(args.elements) > 0)
				}
				return err
			}
			done := spool.Seen{}
			if err := args.each(c, eng, func(refs []string) error {
				if err := report(); err != nil {
					return err
				}
				results := eng.Remove(c.Context, refs, c.Bool("dry-run"), done)
				args.labelResults(results)
				return r.add(results, transfer.Stats{})
			}); err != nil {
				return err
			}
			if err := report(); err != nil {
				return err
			}
			return r.finish(nil)
		},
	}
}
