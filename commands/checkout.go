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
			"with names that could write outside DIR is refused before anything is written.\n" +
			"In non-strict mode (--no-strict) an element whose strict ref is not local is\n" +
			"checked out by its weak ref, local or pulled, as bst --no-strict checkout does.",
		Flags: append(refFlags(), nonStrictFlag(),
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
			args, err := readRefList(c, c.App.Reader, c.Args().Slice()[:1], false, nonStrict(c, e))
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
			refs, err := args.plain.all()
			if err != nil {
				return err
			}
			strict := append(refs, args.resolved...)[0]
			ref, err := checkoutRef(c, e, eng, strict, args.weak[strict])
			if err != nil {
				return err
			}
			root, err := eng.FilesRoot(ref)
			if err != nil {
				return fmt.Errorf("checkout %s: %w", ref, err)
			}
			n, err := eng.Store.Checkout(root, dir, cache.CheckoutOptions{Copy: c.Bool("copy")})
			if err != nil {
				return fmt.Errorf("checkout %s into %s: %w", ref, dir, err)
			}
			var byWeak string
			if ref != strict {
				byWeak = strict
			}
			if e.json {
				writeJSON(e, struct {
					Ref       string `json:"ref"`
					Directory string `json:"directory"`
					// StrictRef is set when ref is the element's weak ref.
					StrictRef string `json:"strict_ref,omitempty"`
				}{ref, dir, byWeak}, map[string]int{"files": n})
				return nil
			}
			fmt.Fprintf(e.stdout, "%s: %s checked out into %s\n", ref, words.Plural(n, "file"), dir)
			if byWeak != "" {
				fmt.Fprintf(e.stdout, "%s: by weak key (non-strict): the strict key %s is not local\n", ref, strict)
			}
			return nil
		},
	}
}

// checkoutRef is the ref to check out: ref if it is local, else its weak
// ref (non-strict mode, weak set) if that is local, else what a pull
// brings, by the weak ref when no cache has ref.
func checkoutRef(c *cli.Context, e *env, eng *transfer.Engine, ref, weak string) (string, error) {
	for _, r := range []string{ref, weak} {
		if r == "" {
			continue
		}
		if _, err := eng.FilesRoot(r); !errors.Is(err, cache.ErrNotFound) {
			return r, nil // another error is checkout's to report
		}
	}
	if c.Bool("no-pull") {
		return "", refsMissing("%s is not in the local store (%s) and --no-pull was given", ref, e.cfg.Local)
	}
	return pullForCheckout(c, eng, ref, weak)
}

// pullForCheckout pulls one ref, by its weak ref when it has one and no
// cache has ref, and says which it got; a ref in no cache is ErrRefsMissing.
func pullForCheckout(c *cli.Context, eng *transfer.Engine, ref, weak string) (string, error) {
	o := transfer.PullOptions{}
	if weak != "" {
		o.Weak = map[string]string{ref: weak}
	}
	res, _ := eng.Pull(c.Context, []string{ref}, o)
	switch r := res[0]; r.Status {
	case transfer.StatusDone, transfer.StatusSkipped:
		return r.Ref, nil
	case transfer.StatusMissing:
		return "", refsMissing("pulling %s: %s", ref, r.Reason)
	default:
		return "", fmt.Errorf("pulling %s: %s", ref, r.Reason)
	}
}
