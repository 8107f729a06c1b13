package commands

import (
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/words"
	"github.com/bst-cache/bst-cache/transfer"
)

func duCommand() *cli.Command {
	return &cli.Command{
		Name:      "du",
		Usage:     "what refs take in the local store, and the store's total",
		ArgsUsage: "[REF|ELEMENT|GLOB...] (every local ref when none)",
		Description: "Prints each ref's closure (its blobs, optional trees the store holds included)\n" +
			"and then the store: every object, and what the refs listed reach with shared\n" +
			"blobs counted once.",
		Flags: refFlags(),
		Action: func(c *cli.Context) error {
			e, kind, err := localEnv(c)
			if err != nil {
				return err
			}
			refs, _, err := refsOrAll(c, e, kind)
			if err != nil {
				return err
			}
			store, err := e.readStore()
			if err != nil {
				return err
			}
			eng := &transfer.Engine{Store: store, Kind: kind}
			usage, total, err := eng.Usage(c.Context, refs)
			if err != nil {
				return err
			}
			if e.json {
				missing := 0
				for _, u := range usage {
					missing += u.Missing
				}
				writeJSON(e, struct {
					Refs  []transfer.RefUsage `json:"refs"`
					Store transfer.StoreUsage `json:"store"`
				}{usage, total}, map[string]int{"refs": len(usage), "objects": total.Objects, "blobs_missing": missing})
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
			for _, u := range usage {
				note := ""
				switch {
				case u.Error != "":
					note = "  " + u.Error
				case u.Missing > 0:
					note = fmt.Sprintf("  (%s missing)", words.Plural(u.Missing, "blob"))
				}
				// The ref is not a cell (it would be right-aligned): it
				// needs its own separator.
				fmt.Fprintf(tw, "%s\t%s\t  %s%s\n", humanBytes(u.Bytes), words.Plural(u.Blobs, "blob"), u.Ref, note)
			}
			tw.Flush()
			fmt.Fprintf(e.stdout, "store: %s in %s; the refs listed reach %s (shared blobs once)\n",
				humanBytes(total.Bytes), words.Plural(total.Objects, "object"), humanBytes(total.UniqueBytes))
			return nil
		},
	}
}

// refsOrAll are the refs a command was given, or every ref in the local
// store when none was (all is then true).
func refsOrAll(c *cli.Context, e *env, kind cache.Kind) (refs []string, all bool, err error) {
	if c.NArg() > 0 || c.String("refs-from") != "" {
		args, err := expandGlobs(c, e, kind)
		if err != nil {
			return nil, false, err
		}
		return append(args.plain, args.resolved...), false, nil
	}
	store, err := e.readStore()
	if err != nil {
		return nil, false, err
	}
	names := store.Refs(kind, "", "")
	for names.Next() {
		refs = append(refs, names.Name())
	}
	return refs, true, names.Err()
}
