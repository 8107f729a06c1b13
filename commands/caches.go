package commands

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/remotes"
)

func cachesCommand() *cli.Command {
	return &cli.Command{
		Name:  "caches",
		Usage: "list the configured caches in priority order, with their status and capabilities",
		Description: "Probes every cache in parallel (unless --offline) the way BuildStream 1.6 does,\n" +
			"and prints one row per cache. With --check, exits 1 when any cache is not ok.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "offline", Usage: "do not contact the caches"},
			&cli.DurationFlag{Name: "timeout", Value: 5 * time.Second, Usage: "how long a probe may take"},
			&cli.BoolFlag{Name: "check", Usage: "exit 1 when any cache is unreachable or in error"},
		},
		Action: func(c *cli.Context) error {
			e, err := newEnv(c)
			if err != nil {
				return err
			}
			if c.NArg() > 0 {
				return usageError("caches takes no arguments")
			}
			rows := probeAll(c.Context, e, c.Bool("offline"), c.Duration("timeout"))
			if e.json {
				writeJSON(e, rows, cacheCounts(rows))
			} else {
				err = writeCachesTable(e, rows)
			}
			if err != nil {
				return err
			}
			if c.Bool("check") {
				for _, r := range rows {
					if r.Status != remotes.StatusOK && r.Status != remotes.StatusUnchecked {
						return fmt.Errorf("cache %s is %s", r.Name, r.Status)
					}
				}
			}
			return nil
		},
	}
}

// cacheRow is one cache as `caches` prints it.
type cacheRow struct {
	Name         string                `json:"name"`
	URL          string                `json:"url"`
	InstanceName string                `json:"instance_name"`
	Type         config.Type           `json:"type"`
	Push         bool                  `json:"push"`
	Origin       string                `json:"origin"`
	Status       string                `json:"status"`
	Error        string                `json:"error,omitempty"`
	Warning      string                `json:"warning,omitempty"`
	Capabilities *remotes.Capabilities `json:"capabilities,omitempty"`
}

// probeAll probes every cache at once, each under its own timeout.
func probeAll(ctx context.Context, e *env, offline bool, timeout time.Duration) []cacheRow {
	caches := e.cfg.Caches
	rows := make([]cacheRow, len(caches))
	var wg sync.WaitGroup
	for i, cc := range caches {
		rows[i] = cacheRow{
			Name: cc.Name, URL: cc.URL, InstanceName: cc.InstanceName, Type: cc.Type,
			Push: cc.Push, Origin: cc.Origin.String(), Status: remotes.StatusUnchecked,
		}
		if offline {
			continue
		}
		wg.Add(1)
		go func(row *cacheRow, cc config.Cache) {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			r, err := remotes.Dial(pctx, cc)
			if err != nil {
				row.Status, row.Error = remotes.StatusError, err.Error()
				return
			}
			defer r.Close()
			start := time.Now()
			res := remotes.Probe(pctx, r, cc.Type)
			e.debugf("probed %s (%s) in %v: %s", cc.Name, cc.URL, time.Since(start).Round(time.Millisecond), res.Status)
			row.Status = res.Status
			if res.Err != nil {
				row.Error = res.Err.Error()
			}
			row.Warning = res.Warning
			if res.Status != remotes.StatusUnreachable {
				row.Capabilities = &res.Caps
			}
		}(&rows[i], cc)
	}
	wg.Wait()
	return rows
}

func writeCachesTable(e *env, rows []cacheRow) error {
	if len(rows) == 0 {
		e.warnf("no caches configured (see bst-cache config)")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tURL\tINSTANCE\tTYPE\tPUSH\tORIGIN\tSTATUS\tCAPABILITIES")
	for _, r := range rows {
		inst := r.InstanceName
		if inst == "" {
			inst = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.URL, inst, r.Type, yesNo(r.Push), r.Origin, r.Status, capsSummary(r.Capabilities))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintf(e.stdout, "%s: %s\n", r.Name, r.Error)
		}
		if r.Warning != "" {
			fmt.Fprintf(e.stdout, "%s: warning: %s\n", r.Name, r.Warning)
		}
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// capsSummary lists what a cache supports in a few words.
func capsSummary(c *remotes.Capabilities) string {
	if c == nil {
		return "-"
	}
	var parts []string
	add := func(ok bool, name string) {
		if ok {
			parts = append(parts, name)
		}
	}
	add(c.CAS, "cas")
	add(c.BatchRead, "batch-read")
	add(c.BatchUpdate, "batch-update")
	add(c.GetTree, "get-tree")
	add(c.RemoteAssetFetch, "asset-fetch")
	add(c.RemoteAssetPush, "asset-push")
	if c.ReferenceStorage {
		if c.AllowUpdates {
			parts = append(parts, "refstorage(rw)")
		} else {
			parts = append(parts, "refstorage(ro)")
		}
	}
	if c.MaxBatchBytes > 0 {
		parts = append(parts, "max-batch="+humanBytes(c.MaxBatchBytes))
	}
	if len(c.Compressors) > 0 {
		parts = append(parts, "compressors="+strings.Join(c.Compressors, "+"))
	}
	add(c.Compressed, "zstd-on-the-wire")
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

// humanBytes formats a size in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d%ciB", int64(v), "KMGTPE"[exp])
	}
	return fmt.Sprintf("%.1f%ciB", v, "KMGTPE"[exp])
}

// cacheCounts counts the caches by status, zeros included.
func cacheCounts(rows []cacheRow) map[string]int {
	counts := map[string]int{remotes.StatusOK: 0, remotes.StatusUnreachable: 0, remotes.StatusError: 0, remotes.StatusUnchecked: 0}
	for _, r := range rows {
		counts[r.Status]++
	}
	return counts
}
