package commands

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/remotes"
	"github.com/bst-cache/bst-cache/transfer"
)

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:      "ls",
		Usage:     "list refs in the local store",
		ArgsUsage: "[PREFIX|GLOB]",
		Description: "Prints the refs, one per line (pipe them into push -): artifacts of both\n" +
			"BuildStreams, whatever the store's layout. With -l, each ref is\n" +
			"followed by the digest it names and when it was last written: bst1 refs name\n" +
			"the root Directory; bst2 refs are Artifact (or Source) messages, shown by their\n" +
			"own digest. PREFIX (myproj/app) matches the refs under it; in a GLOB, '*' also\n" +
			"matches '/'.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "kind", Value: "artifact", Usage: "artifact or source (bst2 only)"},
			&cli.BoolFlag{Name: "long", Aliases: []string{"l"}, Usage: "also print each ref's digest and when it was written"},
			&cli.StringFlag{Name: "cache", Usage: "list what this cache holds (a bst-cache serve; other servers cannot list)"},
		},
		Action: func(c *cli.Context) error {
			e, err := newEnv(c)
			if err != nil {
				return err
			}
			if c.NArg() > 1 {
				return usageError("ls takes at most one GLOB")
			}
			kind := cache.Kind(c.String("kind"))
			if kind != cache.KindArtifact && kind != cache.KindSource {
				return usageError("--kind must be artifact or source, not %q", kind)
			}
			if kind == cache.KindSource && e.cfg.Format == cache.KindBst1Artifact {
				return usageError("--kind source: BuildStream 1 has no source cache (the format is bst1)")
			}
			if name := c.String("cache"); name != "" {
				return lsRemote(c, e, name, kind)
			}
			s, err := e.readStore()
			if err != nil {
				return err
			}
			refs, err := s.ListRefs(kind, prefixPattern(c.Args().First()))
			if err != nil {
				return err
			}
			entries := make([]lsEntry, 0, len(refs))
			for _, r := range refs {
				entries = append(entries, describeRef(s, r))
			}
			return printRefs(c, e, entries)
		},
	}
}

type lsEntry struct {
	Ref      string    `json:"ref"`
	Digest   string    `json:"digest"`
	Modified time.Time `json:"modified"`
	Error    string    `json:"error,omitempty"`
}

// describeRef reads the digest a ref names. A ref that cannot be read is
// still listed, with the reason.
func describeRef(s *cache.Store, r cache.RefInfo) lsEntry {
	en := lsEntry{Ref: r.Name, Modified: r.Modified.UTC()}
	data, err := s.GetRef(r.Kind, r.Name)
	if err != nil {
		en.Digest, en.Error = "-", err.Error()
		return en
	}
	d, err := buildstream.RefDigest(r.Kind == cache.KindBst1Artifact, data)
	if err != nil {
		en.Digest, en.Error = "-", fmt.Sprintf("unreadable ref: %v", err)
		return en
	}
	en.Digest = d.String()
	return en
}

// prefixPattern turns a plain prefix ("myproj/app") into the glob of the
// refs under it; a glob stays as it is.
func prefixPattern(arg string) string {
	if arg == "" || strings.ContainsAny(arg, "*?[") {
		return arg
	}
	return strings.TrimSuffix(arg, "/") + "/*"
}

// lsRemote lists what a cache holds through serve's listing service.
func lsRemote(c *cli.Context, e *env, name string, kind cache.Kind) error {
	cc, ok := e.cfg.Cache(name)
	if !ok {
		return noCache(e.cfg, name)
	}
	prefix := c.Args().First()
	if strings.ContainsAny(prefix, "*?[") {
		return usageError("ls --cache takes a prefix (myproj/app), not a glob")
	}
	kind, err := transfer.KindFor(e.cfg.Format, kind)
	if err != nil {
		return usageError("--kind: %v", err)
	}
	r, err := remotes.Dial(c.Context, *cc)
	if err != nil {
		return err
	}
	defer r.Close()
	var entries []lsEntry
	for _, k := range kind.Kinds() {
		refs, err := r.ListRefs(c.Context, string(k), prefix)
		if errors.Is(err, remotes.ErrCannotList) {
			return fmt.Errorf("%w; a bst-artifact-server or BuildStream cache directory can be listed where it lies: bst-cache --local DIR ls", err)
		}
		if err != nil {
			return err
		}
		for _, ref := range refs {
			entries = append(entries, lsEntry{Ref: ref.Name, Digest: ref.Digest, Modified: ref.Modified})
		}
	}
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].Ref < entries[j].Ref })
	return printRefs(c, e, entries)
}

// printRefs prints refs one per line, with -l their digest and date, or
// as JSON.
func printRefs(c *cli.Context, e *env, entries []lsEntry) error {
	if e.json {
		writeJSON(e, entries, map[string]int{"refs": len(entries)})
		return nil
	}
	if !c.Bool("long") {
		for _, en := range entries {
			fmt.Fprintln(e.stdout, en.Ref)
		}
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	for _, en := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", en.Ref, en.Digest, en.Modified.Format(time.RFC3339))
	}
	return tw.Flush()
}
