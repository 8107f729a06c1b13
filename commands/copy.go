package commands

import (
	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/transfer"
)

func copyCommand() *cli.Command {
	return &cli.Command{
		Name:      "copy",
		Usage:     "copy refs between caches through the local store (promotion, migration)",
		ArgsUsage: "REF... (- reads refs from stdin)",
		Description: "Pulls each ref from --from (or by priority from every cache that is not a\n" +
			"target), then pushes it to each --to. A target that names a different digest\n" +
			"for a ref is left alone and reported as a conflict unless --force.",
		Flags: append(append(refFlags(), fetchFlags()...),
			&cli.StringFlag{Name: "from", Usage: "pull only from this cache"},
			&cli.StringSliceFlag{Name: "to", Usage: "push to this cache (repeatable, required)"},
			&cli.BoolFlag{Name: "force", Usage: "overwrite a target that names a different digest"},
			&cli.BoolFlag{Name: "include-failed", Usage: "also promote bst2 artifacts whose build failed"},
			&cli.BoolFlag{Name: "dry-run", Usage: "report what would move and change nothing"},
		),
		Action: func(c *cli.Context) error {
			e, kind, err := transferEnv(c)
			if err != nil {
				return err
			}
			if len(c.StringSlice("to")) == 0 {
				return usageError("copy needs at least one --to NAME")
			}
			targets, err := pushTargets(e.cfg, c.StringSlice("to"), false)
			if err != nil {
				return err
			}
			sources, err := copySources(e.cfg, c.String("from"), targets)
			if err != nil {
				return err
			}
			refs, err := readRefs(c, c.App.Reader)
			if err != nil {
				return err
			}
			p := newProgress(c, e, "copy", len(refs)*len(targets))
			eng, err := engine(c, e, kind, sources, p)
			if err != nil {
				return err
			}
			targetCaches := transfer.NewCaches(targets)
			defer transfer.Close(eng.Caches)
			defer transfer.Close(targetCaches)
			results, stats := eng.Copy(c.Context, refs, targetCaches, transfer.CopyOptions{
				PushOptions:   transfer.PushOptions{Force: c.Bool("force"), DryRun: c.Bool("dry-run")},
				IncludeFailed: c.Bool("include-failed"),
			})
			return finishRun(c, e, p, "copy", results, stats)
		},
	}
}

// copySources is --from alone, or every cache that is not a target.
func copySources(cfg *config.Config, from string, targets []config.Cache) ([]config.Cache, error) {
	isTarget := map[string]bool{}
	for _, t := range targets {
		isTarget[t.Name] = true
	}
	if from != "" {
		c, ok := cfg.Cache(from)
		if !ok {
			return nil, usageError("no cache named %q (see bst-cache caches)", from)
		}
		if isTarget[from] {
			return nil, usageError("--from %s is also a --to target", from)
		}
		return []config.Cache{*c}, nil
	}
	var out []config.Cache
	for _, c := range cfg.Caches {
		if !isTarget[c.Name] {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, usageError("no cache to copy from: every cache is a target")
	}
	return out, nil
}
