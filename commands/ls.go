package commands

import (
	"bufio"
	"errors"
	"fmt"
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
			p := newRefPrinter(c, e)
			var opts []cache.RefsOption
			if p.details {
				opts = append(opts, cache.WithRefData())
			}
			refs, err := s.MatchRefs(kind, prefixPattern(c.Args().First()), opts...)
			if err != nil {
				return err
			}
			for refs.Next() {
				en := lsEntry{Ref: refs.Name()}
				if p.details {
					en = describeRef(refs)
				}
				p.print(en)
			}
			if err := refs.Err(); err != nil {
				return err
			}
			return p.done()
		},
	}
}

type lsEntry struct {
	Ref      string    `json:"ref"`
	Digest   string    `json:"digest"`
	Modified time.Time `json:"modified"`
	Error    string    `json:"error,omitempty"`
}

// describeRef is the digest the ref a walk WithRefData is at names, and
// when it was written. A ref that cannot be read is still listed, with
// the reason.
func describeRef(refs *cache.RefCursor) lsEntry {
	data, info, err := refs.Data()
	kind := refs.Kind()
	en := lsEntry{Ref: refs.Name(), Modified: info.Modified.UTC()}
	if err != nil {
		en.Digest, en.Error = "-", err.Error()
		return en
	}
	d, err := buildstream.RefDigest(kind == cache.KindBst1Artifact, data)
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
	kinds := []string{}
	for _, k := range kind.Kinds() {
		kinds = append(kinds, string(k))
	}
	p := newRefPrinter(c, e)
	err = r.WalkRefs(c.Context, kinds, prefix, func(ref remotes.ListedRef) error {
		p.print(lsEntry{Ref: ref.Name, Digest: ref.Digest, Modified: ref.Modified})
		return nil
	})
	if errors.Is(err, remotes.ErrCannotList) {
		return fmt.Errorf("%w; a bst-artifact-server or BuildStream cache directory can be listed where it lies: bst-cache --local DIR ls", err)
	}
	if err != nil {
		return err
	}
	return p.done()
}

// refPrinter prints refs as they come, one per line, with -l their
// digest and date (aligned a page of lsPage at a time), or streams them
// into the JSON document: a listing costs no memory by the refs listed.
type refPrinter struct {
	e       *env
	long    bool
	details bool
	w       *bufio.Writer
	tw      *tabwriter.Writer
	lines   int
	err     error // of the JSON stream
}

// lsPage is how many lines of ls -l are aligned together.
const lsPage = 1000

func newRefPrinter(c *cli.Context, e *env) *refPrinter {
	p := &refPrinter{e: e, long: c.Bool("long"), details: c.Bool("long") || e.json, w: bufio.NewWriter(e.stdout)}
	if p.long {
		p.tw = tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	}
	if e.json {
		p.err = e.out.stream(e.stdout, "result", []lsEntry{})
	}
	return p
}

func (p *refPrinter) print(en lsEntry) {
	switch {
	case p.e.json:
		if p.err == nil {
			p.err = p.e.out.item(en)
		}
	case p.long:
		fmt.Fprintf(p.tw, "%s\t%s\t%s\n", en.Ref, en.Digest, en.Modified.Format(time.RFC3339))
	default:
		fmt.Fprintln(p.w, en.Ref)
	}
	if p.lines++; p.lines%lsPage == 0 {
		p.flush()
	}
}

func (p *refPrinter) flush() error {
	if p.long {
		if err := p.tw.Flush(); err != nil {
			return err
		}
	}
	return p.w.Flush()
}

// done prints what is left.
func (p *refPrinter) done() error {
	if p.e.json {
		writeJSON(p.e, []lsEntry{}, map[string]int{"refs": p.lines})
		return p.err
	}
	return p.flush()
}
