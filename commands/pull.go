package commands

import (
	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/transfer"
)

func pullCommand() *cli.Command {
	return &cli.Command{
		Name:      "pull",
		Usage:     "fetch refs from the highest-priority cache that has them into the local store",
		ArgsUsage: "REF... (- reads refs from stdin)",
		Flags:     append(append(refFlags(), fetchFlags()...), nonStrictFlag()),
		Action: func(c *cli.Context) error {
			e, kind, args, err := readingEnv(c)
			if err != nil {
				return err
			}
			p := newProgress(c, e, "pull")
			pl := newPool(e.cfg)
			defer pl.close()
			eng, err := engine(c, e, kind, pl, pl.all, p)
			if err != nil {
				return err
			}
			r, err := newReport(c, e, p, "pull", len(args.elements) > 0)
			if err != nil {
				return err
			}
			err = args.each(c, eng, func(refs []string) error {
				p.expect(args.total())
				results, stats := eng.Pull(c.Context, refs, transfer.PullOptions{DryRun: c.Bool("dry-run"), Weak: args.weak})
				args.labelResults(results)
				return r.add(results, stats)
			})
			if err != nil {
				return err
			}
			err = r.finish(pl.all)
			if gerr := autoGC(c, e, eng, pl); err == nil {
				err = gerr
			}
			return err
		},
	}
}
