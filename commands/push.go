package commands

import (
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/transfer"
)

func pushCommand() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "upload local refs to the default push cache, to --cache NAME, or to --all push caches",
		ArgsUsage: "REF|GLOB... (- reads refs from stdin; a GLOB matches refs in the local store)",
		Description: "Uploads only the blobs each target lacks, then writes its index entry. A target\n" +
			"whose index names the same digest is skipped only when it holds every blob;\n" +
			"otherwise the missing blobs are sent and the ref is reported repaired. A target\n" +
			"that names a different digest is left alone and reported as a conflict (exit 1)\n" +
			"unless --force. Index-only targets are written only after every blob is\n" +
			"confirmed on the storage caches their readers use.",
		Flags: append(refFlags(),
			&cli.StringSliceFlag{Name: "cache", Usage: "push to this cache (repeatable)"},
			&cli.BoolFlag{Name: "all", Usage: "push to every cache with push = true, as BuildStream does"},
			&cli.BoolFlag{Name: "force", Usage: "upload and rewrite the index even when the target already has the ref, and overwrite a target that names a different digest"},
			&cli.BoolFlag{Name: "dry-run", Usage: "report what would move and change nothing"},
		),
		Action: func(c *cli.Context) error {
			e, kind, err := transferEnv(c)
			if err != nil {
				return err
			}
			targets, err := pushTargets(e.cfg, c.StringSlice("cache"), c.Bool("all"))
			if err != nil {
				return err
			}
			args, err := expandGlobs(c, e, kind)
			if err != nil {
				return err
			}
			p := newProgress(c, e, "push")
			pl := newPool(e.cfg)
			defer pl.close()
			eng, err := engine(c, e, kind, pl, nil, p)
			if err != nil {
				return err
			}
			r, err := newReport(c, e, p, "push", len(args.elements) > 0)
			if err != nil {
				return err
			}
			err = args.each(c, eng, func(refs []string) error {
				p.expect(args.total() * len(targets))
				results, stats := eng.Push(c.Context, refs, pl.named(names(targets)), transfer.PushOptions{Force: c.Bool("force"), DryRun: c.Bool("dry-run")})
				args.labelResults(results)
				return r.add(results, stats)
			})
			if err != nil {
				return err
			}
			return r.finish(pl.all)
		},
	}
}

// names lists configured caches' names.
func names(cs []config.Cache) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// pushTargets resolves --cache/--all to caches that accept pushes; a named
// cache without push = true is a usage error.
func pushTargets(cfg *config.Config, names []string, all bool) ([]config.Cache, error) {
	var out []config.Cache
	switch {
	case all && len(names) > 0:
		return nil, usageError("give --cache or --all, not both")
	case all:
		for _, c := range cfg.Caches {
			if c.Push {
				out = append(out, c)
			}
		}
		if len(out) == 0 {
			return nil, usageError("--all: no cache has push = true")
		}
	case len(names) > 0:
		for _, n := range names {
			c, ok := cfg.Cache(n)
			if !ok {
				return nil, noCache(cfg, n)
			}
			if !c.Push {
				return nil, usageError("cache %q does not have push = true (%s)", n, c.Origin)
			}
			out = append(out, *c)
		}
	default:
		c, ok := cfg.DefaultPush()
		if !ok {
			return nil, usageError("no cache has push = true; set one or name one with --cache")
		}
		out = append(out, *c)
	}
	return out, nil
}

// expandGlobs reads the refs and adds, for each glob, the local refs it
// matches.
func expandGlobs(c *cli.Context, e *env, kind cache.Kind) (refArgs, error) {
	var globs, plain []string
	for _, a := range c.Args().Slice() {
		if strings.ContainsAny(a, "*?[") {
			globs = append(globs, a)
		} else {
			plain = append(plain, a)
		}
	}
	args, err := readRefsFrom(c, plain)
	if err != nil {
		return refArgs{}, err
	}
	if len(globs) == 0 {
		if args.count() == 0 {
			return refArgs{}, usageError("no refs given (arguments, - for stdin, or --refs-from FILE)")
		}
		return args, nil
	}
	store, err := e.readStore()
	if err != nil {
		return refArgs{}, err
	}
	for _, g := range globs {
		// Walked, not listed: the names go to the spool (refList) as
		// they come.
		refs, err := store.MatchRefs(kind, g)
		if err != nil {
			return refArgs{}, usageError("%v", err)
		}
		matched := 0
		for ; refs.Next(); matched++ {
			if err := args.plain.add(refs.Name()); err != nil {
				return refArgs{}, err
			}
		}
		if err := refs.Err(); err != nil {
			return refArgs{}, usageError("%v", err)
		}
		if matched == 0 {
			return refArgs{}, usageError("%q matches no ref in the local store (%s)", g, store.Root())
		}
	}
	return args, nil
}
