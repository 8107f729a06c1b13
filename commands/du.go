package commands

import (
	"bufio"
	"fmt"

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
			tableHeap()
			e, kind, err := localEnv(c)
			if err != nil {
				return err
			}
			store, err := e.readStore()
			if err != nil {
				return err
			}
			eng := &transfer.Engine{Store: store, Kind: kind}
			var usage *transfer.Usages
			if c.NArg() > 0 || c.String("refs-from") != "" {
				args, err := expandGlobs(c, e, kind)
				if err != nil {
					return err
				}
				refs, err := args.plain.all()
				if err != nil {
					return err
				}
				if usage, err = eng.Usage(c.Context, append(refs, args.resolved...)); err != nil {
					return err
				}
			} else if usage, err = eng.UsageAll(c.Context); err != nil {
				return err
			}
			defer usage.Close()
			total := usage.Store
			if e.json {
				// Each ref's line goes out as it is read: the document
				// does not hold every ref.
				result := struct {
					Refs  []transfer.RefUsage `json:"refs"`
					Store transfer.StoreUsage `json:"store"`
				}{[]transfer.RefUsage{}, total}
				if err := e.out.stream(e.stdout, "refs", result); err != nil {
					return err
				}
				missing := 0
				if err := usage.Each(func(u transfer.RefUsage) error {
					missing += u.Missing
					return e.out.item(u)
				}); err != nil {
					return err
				}
				writeJSON(e, result, map[string]int{"refs": usage.Len(), "objects": total.Objects, "blobs_missing": missing})
				return nil
			}
			// A line a write would be a system call a ref. The columns
			// are right-aligned to their widest cell (as a tabwriter
			// would, without keeping a line a ref): the refs are gone
			// through twice.
			out := bufio.NewWriter(e.stdout)
			width := [2]int{}
			if err := usage.Each(func(u transfer.RefUsage) error {
				width[0] = max(width[0], len(humanBytes(u.Bytes)))
				width[1] = max(width[1], len(words.Plural(u.Blobs, "blob")))
				return nil
			}); err != nil {
				return err
			}
			if err := usage.Each(func(u transfer.RefUsage) error {
				note := ""
				switch {
				case u.Error != "":
					note = "  " + u.Error
				case u.Missing > 0:
					note = fmt.Sprintf("  (%s missing)", words.Plural(u.Missing, "blob"))
				}
				_, err := fmt.Fprintf(out, "  %*s  %*s  %s%s\n", width[0], humanBytes(u.Bytes), width[1], words.Plural(u.Blobs, "blob"), u.Ref, note)
				return err
			}); err != nil {
				return err
			}
			fmt.Fprintf(out, "store: %s in %s; the refs listed reach %s (shared blobs once)\n",
				humanBytes(total.Bytes), words.Plural(total.Objects, "object"), humanBytes(total.UniqueBytes))
			return out.Flush()
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
		refs, err := args.plain.all()
		return append(refs, args.resolved...), false, err
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
