package commands

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
)

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:      "ls",
		Usage:     "list refs in the local store",
		ArgsUsage: "[GLOB]",
		Description: "Prints one ref per line, ref first, then the digest it names and when it was\n" +
			"last written. In GLOB, '*' also matches '/'. bst1 refs name the root Directory;\n" +
			"bst2 refs are Artifact (or Source) messages, shown by their own digest.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "kind", Value: "artifact", Usage: "artifact or source (bst2 only)"},
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
			if kind == cache.KindSource && e.cfg.Format == config.FormatBst1 {
				return usageError("--kind source: BuildStream 1 has no source cache (the format is bst1)")
			}
			s, err := e.readStore()
			if err != nil {
				return err
			}
			refs, err := s.ListRefs(kind, c.Args().First())
			if err != nil {
				return err
			}
			entries := make([]lsEntry, 0, len(refs))
			for _, r := range refs {
				entries = append(entries, describeRef(s, kind, r))
			}
			if e.json {
				return writeJSON(e, entries)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			for _, en := range entries {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", en.Ref, en.Digest, en.Modified.Format(time.RFC3339))
			}
			return tw.Flush()
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
func describeRef(s *cache.Store, kind cache.Kind, r cache.RefInfo) lsEntry {
	en := lsEntry{Ref: r.Name, Modified: r.Modified.UTC()}
	data, err := s.GetRef(kind, r.Name)
	if err != nil {
		en.Digest, en.Error = "-", err.Error()
		return en
	}
	if s.Layout() == cache.LayoutBst2 {
		en.Digest = digest.NewFromBlob(data).String()
		return en
	}
	d, err := buildstream.ParseV1Ref(data)
	if err != nil {
		en.Digest, en.Error = "-", fmt.Sprintf("unreadable ref: %v", err)
		return en
	}
	en.Digest = d.String()
	return en
}
