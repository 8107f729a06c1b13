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
		Flags: append(refFlags(),
			&cli.BoolFlag{Name: "strict", Usage: "fail on any cache error instead of warning and going on"},
			&cli.BoolFlag{Name: "with-buildtrees", Usage: "also fetch bst2 buildtrees (and other optional trees)"},
		),
		Action: func(c *cli.Context) error {
			e, err := newEnv(c)
			if err != nil {
				return err
			}
			kind, err := transferKind(c, e)
			if err != nil {
				return err
			}
			refs, err := readRefs(c, c.App.Reader)
			if err != nil {
				return err
			}
			if len(e.cfg.Caches) == 0 {
				return usageError("no caches configured (see bst-cache config)")
			}
			p := newProgress(c, e, "pull", len(refs))
			eng, err := engine(c, e, kind, e.cfg.Caches, p)
			if err != nil {
				return err
			}
			defer transfer.Close(eng.Caches)
			results, stats := eng.Pull(c.Context, refs)
			p.finish()
			if err := c.Context.Err(); err != nil {
				return err
			}
			return finishRun(e, "pull", results, stats)
		},
	}
}
