package commands

import (
	"context"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/transfer"
)

func copyCommand() *cli.Command {
	return &cli.Command{
		Name:      "copy",
		Usage:     "copy refs between caches through the local store (promotion, migration)",
		ArgsUsage: "REF... (- reads refs from stdin)",
		Description: "Resolves each ref on the sources (--from, in the order given, or by priority\n" +
			"every cache that is not a target) and checks its closure on their storage; the\n" +
			"local store only saves downloading blobs it already holds. Then pushes it to each\n" +
			"--to: a target that names a different digest is left alone and reported as a\n" +
			"conflict unless --force; one that names it but lacks blobs is repaired. An\n" +
			"index-only source takes its blobs from the storage caches named with it, else\n" +
			"from the configured storage caches.",
		Flags: copyFlags(&cli.StringSliceFlag{Name: "from", Usage: "copy from this cache (repeatable: an ordered list of sources)"}),
		Action: func(c *cli.Context) error {
			e, kind, err := transferEnv(c)
			if err != nil {
				return err
			}
			sources, targets, err := copyEnds(c, e, c.StringSlice("from"))
			if err != nil {
				return err
			}
			args, err := readRefs(c, c.App.Reader)
			if err != nil {
				return err
			}
			return runCopy(c, e, kind, sources, targets, args, args.each)
		},
	}
}

// copyFlags are the flags of the commands that copy (copy, sync), with
// their --from.
func copyFlags(from cli.Flag) []cli.Flag {
	return append(append(refFlags(), fetchFlags()...), from,
		&cli.StringSliceFlag{Name: "to", Usage: "push to this cache (repeatable, required)"},
		&cli.BoolFlag{Name: "force", Usage: "overwrite a target that names a different digest"},
		&cli.BoolFlag{Name: "include-failed", Usage: "also copy bst2 artifacts whose build failed"},
	)
}

// copyEnds are the sources (from, else every cache that is not a target)
// and the targets (--to) of a copy.
func copyEnds(c *cli.Context, e *env, from []string) (sources, targets []config.Cache, err error) {
	if len(c.StringSlice("to")) == 0 {
		return nil, nil, usageError("%s needs at least one --to NAME", c.Command.Name)
	}
	if targets, err = pushTargets(e.cfg, c.StringSlice("to"), false); err != nil {
		return nil, nil, err
	}
	sources, err = copySources(e.cfg, from, targets)
	return sources, targets, err
}

// runCopy copies from sources to targets the refs that each hands out, a
// batch at a time, once the engine is built (copy, sync), and reports them
// with args' element names.
func runCopy(c *cli.Context, e *env, kind cache.Kind, sources, targets []config.Cache, args refArgs,
	each func(*cli.Context, *transfer.Engine, func([]string) error) error) error {
	p := newProgress(c, e, c.Command.Name)
	pl := newPool(e.cfg)
	defer pl.close()
	eng, err := engine(c, e, kind, pl, pl.named(names(sources)), p)
	if err != nil {
		return err
	}
	// Index-only sources read blobs from the configured storage caches
	// that are not targets.
	isTarget := map[string]bool{}
	for _, n := range names(targets) {
		isTarget[n] = true
	}
	eng.Storage = pl.where(func(c *transfer.Cache) bool { return c.Config.Type.HasStorage() && !isTarget[c.Name()] })
	// The targets are probed while the refs are listed or expanded; the
	// copy asks each once its probe is through, a hanging one holding up
	// none of the others.
	var probed sync.WaitGroup
	defer probed.Wait()
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	probed.Add(1)
	go func() {
		defer probed.Done()
		transfer.Connect(ctx, pl.named(names(targets)), eng.Events)
	}()
	r, err := newReport(c, e, p, c.Command.Name, len(args.elements) > 0)
	if err != nil {
		return err
	}
	err = each(c, eng, func(refs []string) error {
		p.expect(args.total() * len(targets))
		results, stats := eng.Copy(c.Context, refs, pl.named(names(targets)), transfer.CopyOptions{
			PushOptions:   transfer.PushOptions{Force: c.Bool("force"), DryRun: c.Bool("dry-run")},
			IncludeFailed: c.Bool("include-failed"),
		})
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
}

// copySources is --from (in the order given), or every cache that is not
// a target.
func copySources(cfg *config.Config, from []string, targets []config.Cache) ([]config.Cache, error) {
	isTarget := map[string]bool{}
	for _, t := range targets {
		isTarget[t.Name] = true
	}
	var out []config.Cache
	if len(from) > 0 {
		seen := map[string]bool{}
		for _, name := range from {
			c, ok := cfg.Cache(name)
			if !ok {
				return nil, noCache(cfg, name)
			}
			if isTarget[name] {
				return nil, usageError("--from %s is also a --to target", name)
			}
			if !seen[name] {
				seen[name] = true
				out = append(out, *c)
			}
		}
		return out, nil
	}
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
