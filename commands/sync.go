package commands

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/remotes"
	"github.com/bst-cache/bst-cache/transfer"
)

func syncCommand() *cli.Command {
	return &cli.Command{
		Name:      "sync",
		Usage:     "copy to a cache what another holds and it lacks (anti-entropy; never deletes)",
		ArgsUsage: "[PREFIX|GLOB] (- reads refs from stdin)",
		Description: "Lists what --from holds (a bst-cache serve, through its listing service; a\n" +
			"PREFIX such as myproj/app or a GLOB narrows it), or takes the refs from - or\n" +
			"--refs-from FILE where --from cannot list (bst-artifact-server, Buildbarn: list\n" +
			"its directory with bst-cache --local DIR ls). Then copies them as copy does:\n" +
			"each --to is asked first, and only what it lacks or holds incomplete moves,\n" +
			"storage before index, each artifact once. A target that names another digest\n" +
			"is a conflict unless --force. Nothing is ever deleted; a second run moves\n" +
			"nothing, and a run cut short resumes where it stopped.",
		Flags: copyFlags(&cli.StringFlag{Name: "from", Usage: "the cache to bring the targets in step with (required)"}),
		Action: func(c *cli.Context) error {
			e, kind, err := transferEnv(c)
			if err != nil {
				return err
			}
			from := c.String("from")
			if from == "" {
				return usageError("sync needs --from NAME")
			}
			if c.NArg() > 1 {
				return usageError("sync takes one PREFIX or GLOB, or - for a list of refs")
			}
			sources, targets, err := copyEnds(c, e, []string{from})
			if err != nil {
				return err
			}
			arg := c.Args().First()
			if arg == "-" || c.String("refs-from") != "" {
				// A list: what copy does with it.
				if arg != "-" && arg != "" {
					return usageError("sync takes a PREFIX or GLOB, or a list (- or --refs-from), not both")
				}
				args, err := readRefs(c, c.App.Reader)
				if err != nil {
					return err
				}
				return runCopy(c, e, kind, sources, targets, args, args.each)
			}
			args, err := readRefsFrom(c, nil) // --deps
			if err != nil {
				return err
			}
			glob := prefixPattern(arg)
			listed := func(c *cli.Context, eng *transfer.Engine, fn func([]string) error) error {
				// The listing is spooled (refList) as its pages come.
				var spoolErr error
				err := eng.List(c.Context, eng.Caches[0], glob, func(r string) error {
					spoolErr = args.plain.add(r)
					return spoolErr
				})
				switch {
				case spoolErr != nil:
					return spoolErr
				case errors.Is(err, remotes.ErrCannotList):
					return fmt.Errorf("%w; give sync the list of what %s holds with --refs-from FILE (or - for stdin), for a bst-artifact-server from bst-cache --local DIR ls where its directory lies", err, from)
				case err != nil:
					return fmt.Errorf("listing %s: %w", from, err)
				case args.plain.len() == 0:
					e.warnf("%s holds no refs%s", from, under(arg))
				}
				return args.each(c, eng, fn)
			}
			return runCopy(c, e, kind, sources, targets, args, listed)
		},
	}
}

// under says which refs a listing was narrowed to.
func under(arg string) string {
	if arg == "" {
		return ""
	}
	return fmt.Sprintf(" matching %q", arg)
}
