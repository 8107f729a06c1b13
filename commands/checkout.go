package commands

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/words"
	"github.com/bst-cache/bst-cache/transfer"
)

func checkoutCommand() *cli.Command {
	return &cli.Command{
		Name:      "checkout",
		Usage:     "write an artifact's files into a directory, pulling it first if it is not local",
		ArgsUsage: "REF|ELEMENT DIR",
		Description: "Writes the artifact's files (BuildStream 1's files/, BuildStream 2's files tree)\n" +
			"into DIR, which must not exist or be empty, with executable bits and symlinks as\n" +
			"stored. Files that are not executable are hard links into the local store when\n" +
			"it is on the same file system: do not edit them in place, or use --copy. A tree\n" +
			"with names that could write outside DIR is refused before anything is written.",
		Flags: append(refFlags(),
			&cli.BoolFlag{Name: "no-pull", Usage: "fail instead of pulling when the artifact is not in the local store"},
			&cli.BoolFlag{Name: "copy", Usage: "copy every file instead of hard-linking from the local store"},
		),
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return usageError("checkout takes a ref or an element, and a directory")
			}
			e, kind, err := localEnv(c)
			if err != nil {
				return err
			}
			args, err := readRefsFrom(c, c.Args().Slice()[:1])
			if err != nil {
				return err
			}
			if args.count() != 1 {
				return usageError("checkout takes one artifact, not %d", args.count())
			}
			dir, err := filepath.Abs(c.Args().Get(1))
			if err != nil {
				return err
			}
			pl := newPool(e.cfg)
			defer pl.close()
			eng, err := engine(c, e, kind, pl, pl.all, &progress{})
			if err != nil {
				return err
			}
			ref := append(args.plain, args.resolved...)[0]
			if _, err := eng.FilesRoot(ref); errors.Is(err, cache.ErrNotFound) {
				if c.Bool("no-pull") {
					return refsMissing("%s is not in the local store (%s) and --no-pull was given", ref, e.cfg.Local)
				}
				if err := pullForCheckout(c, eng, ref); err != nil {
					return err
				}
			}
			root, err := eng.FilesRoot(ref)
			if err != nil {
				return fmt.Errorf("checkout %s: %w", ref, err)
			}
			n, err := eng.Store.Checkout(root, dir, cache.CheckoutOptions{Copy: c.Bool("copy")})
			if err != nil {
				return fmt.Errorf("checkout %s into %s: %w", ref, dir, err)
			}
			if e.json {
				writeJSON(e, struct {
					Ref       string `json:"ref"`
					Directory string `json:"directory"`
				}{ref, dir}, map[string]int{"files": n})
				return nil
			}
			fmt.Fprintf(e.stdout, "%s: %s checked out into %s\n", ref, words.Plural(n, "file"), dir)
			return nil
		},
	}
}

// pullForCheckout pulls one ref; a ref in no cache is ErrRefsMissing.
func pullForCheckout(c *cli.Context, eng *transfer.Engine, ref string) error {
	res, _ := eng.Pull(c.Context, []string{ref}, transfer.PullOptions{})
	switch r := res[0]; r.Status {
	case transfer.StatusDone, transfer.StatusSkipped:
		return nil
	case transfer.StatusMissing:
		return refsMissing("pulling %s: %s", ref, r.Reason)
	default:
		return fmt.Errorf("pulling %s: %s", ref, r.Reason)
	}
}
