package commands

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/words"
	"github.com/bst-cache/bst-cache/transfer"
)

// fetchFlags are the flags of commands that pull.
func fetchFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "fail-on-cache-error", Usage: "fail on any cache error instead of warning and going on"},
		// --strict was --fail-on-cache-error's name until it clashed
		// with BuildStream's strict mode (see pull's --no-strict).
		&cli.BoolFlag{Name: "strict", Hidden: true, Usage: "deprecated name of --fail-on-cache-error"},
		&cli.BoolFlag{Name: "ignore-missing", Usage: "exit 0 when refs in no cache are the only problem (they are still listed)"},
		&cli.BoolFlag{Name: "with-buildtrees", Usage: "also fetch bst2 buildtrees (and other optional trees)"},
		&cli.BoolFlag{Name: "dry-run", Usage: "report what would move (trees are read to size it) and change nothing"},
	}
}

// readingEnv is the prelude of the commands that read from every cache
// (pull, which): the environment, the kind, the refs, and at least one
// cache configured. Every check runs before any network call.
func readingEnv(c *cli.Context) (*env, cache.Kind, refArgs, error) {
	e, kind, err := transferEnv(c)
	if err != nil {
		return nil, "", refArgs{}, err
	}
	refs, err := readRefList(c, c.App.Reader, c.Args().Slice(), true, nonStrict(c, e))
	if err != nil {
		return nil, "", refArgs{}, err
	}
	if len(e.cfg.Caches) == 0 {
		return nil, "", refArgs{}, usageError("no caches configured (see bst-cache config)")
	}
	return e, kind, refs, nil
}

// refFlags are the flags every transfer command takes for its refs.
func refFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "refs-from", Usage: "read refs (or element names) from FILE, one per line (blank lines and # comments skipped)", TakesFile: true},
		&cli.StringFlag{Name: "kind", Value: "artifact", Usage: "artifact or source (bst2 only)"},
		&cli.StringFlag{Name: "deps", Value: "none", Usage: "also the dependencies: none, run, build or all (as bst); for refs, from the artifacts' recorded build dependencies"},
		&cli.StringFlag{Name: "project", Usage: "the BuildStream project element names are resolved in (default: the one around the working directory)", TakesFile: true},
	}
}

// nonStrictFlag is the flag for BuildStream's non-strict mode (pull, which, checkout).
func nonStrictFlag() cli.Flag {
	return &cli.BoolFlag{Name: "no-strict", Usage: "BuildStream's non-strict mode, for element names: an element whose strict key no cache holds (checkout: not local) is taken by its weak key, as bst --no-strict does (the default when BuildStream's configuration sets strict: false for the project)"}
}

// nonStrict says whether element names resolve for BuildStream's
// non-strict mode: in a command that has --no-strict, when it is
// given or BuildStream's user configuration sets the project non-strict.
func nonStrict(c *cli.Context, e *env) bool {
	for _, f := range c.Command.Flags {
		if slices.Contains(f.Names(), "no-strict") {
			return c.Bool("no-strict") || e.cfg.NonStrict
		}
	}
	return false
}

// readRefs gathers refs from the arguments ("-" reads stdin) and
// --refs-from, drops duplicates, and validates them all before anything
// touches the network.
func readRefs(c *cli.Context, stdin io.Reader) (refArgs, error) {
	return readRefList(c, stdin, c.Args().Slice(), true, false)
}

// readRefsFrom is readRefs over some of the arguments; it may find none.
func readRefsFrom(c *cli.Context, args []string) (refArgs, error) {
	return readRefList(c, c.App.Reader, args, false, false)
}

// refArgs are the refs a command was given: plain refs, and the refs bst
// resolved from element names (their dependencies included).
type refArgs struct {
	plain    *refList
	resolved []string
	deps     buildstream.Deps
	// globs match refs in the local store and in caches that can list.
	globs []string
	// elements names the element of each resolved ref (and weak ref).
	elements map[string]string
	// weak maps resolved refs to their weak refs in non-strict mode.
	weak map[string]string
}

// labelResults names the element of each result whose ref came from one.
func (a refArgs) labelResults(results []transfer.Result) {
	for i := range results {
		results[i].Element = a.elements[results[i].Ref]
	}
}

// count is how many refs were named (before --deps on plain refs).
func (a refArgs) count() int { return a.plain.len() + len(a.resolved) + len(a.globs) }

// total is how many refs each has handed out or will: those named, and
// those --deps added so far.
func (a refArgs) total() int { return a.plain.len() + a.plain.extra }

// each hands fn every ref, a batch at a time (refBatch): plain refs with
// their recorded dependencies as --deps selects, then the resolved ones,
// each once. Only a batch is in memory at a time, with a hash of each ref
// named or added (refList).
func (a refArgs) each(c *cli.Context, eng *transfer.Engine, fn func([]string) error) error {
	for _, g := range a.globs {
		matched := 0
		var spoolErr error
		err := eng.Match(c.Context, g, func(r string) error {
			matched++
			spoolErr = a.plain.add(r)
			return spoolErr
		})
		if spoolErr != nil {
			return spoolErr
		}
		if err != nil {
			return usageError("%q: %v", g, err)
		}
		if matched == 0 {
			return usageError("%q matches no ref in the local store or in a cache that can list", g)
		}
	}
	// Resolved refs come last, but count from the start; a plain ref
	// or a dependency that is one of them waits for it.
	var resolved []string
	for _, r := range a.resolved {
		if a.plain.admit(r) {
			resolved = append(resolved, r)
		}
	}
	err := a.plain.each(refBatch, func(batch []string) error {
		if c.Context.Err() != nil {
			// Interrupted: the rest are reported so, unexpanded.
			return fn(batch)
		}
		refs, err := eng.Expand(c.Context, batch, a.deps)
		if errors.Is(err, transfer.ErrRunDeps) {
			return usageError("%v", err)
		}
		if err != nil {
			return err
		}
		if len(refs) > len(batch) {
			// Dependencies named or added before (or to come, named
			// later in the list) are left to their turn.
			own := make(map[string]bool, len(batch))
			for _, r := range batch {
				own[r] = true
			}
			refs = slices.DeleteFunc(refs, func(r string) bool { return !own[r] && !a.plain.admit(r) })
		}
		return fn(refs)
	})
	if err != nil || len(resolved) == 0 {
		return err
	}
	return fn(resolved)
}

// readRefList reads refs and element names from args and --refs-from;
// weak also reads the elements' weak refs (non-strict mode).
func readRefList(c *cli.Context, stdin io.Reader, args []string, required, weak bool) (refArgs, error) {
	deps, err := buildstream.ParseDeps(c.String("deps"))
	if err != nil {
		return refArgs{}, usageError("%v", err)
	}
	var elements, globs []string
	refs := newRefList()
	add := func(ref string) error {
		if buildstream.IsElement(ref) {
			elements = append(elements, ref)
			return nil
		}
		if strings.ContainsAny(ref, "*?[") {
			globs = append(globs, ref)
			return nil
		}
		if err := cache.ValidateRef(ref); err != nil {
			return usageError("%v", err)
		}
		return refs.add(ref)
	}
	readLines := func(r io.Reader, name string) error {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		n := 1
		for ; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if err := add(line); err != nil {
				return fmt.Errorf("%s:%d: %w", name, n, err)
			}
		}
		if errors.Is(sc.Err(), bufio.ErrTooLong) {
			return usageError("%s:%d: line longer than 1 MiB: not a ref", name, n)
		}
		return sc.Err()
	}
	for _, a := range args {
		if a == "-" {
			if err := readLines(stdin, "stdin"); err != nil {
				return refArgs{}, err
			}
			continue
		}
		if err := add(a); err != nil {
			return refArgs{}, err
		}
	}
	if f := c.String("refs-from"); f != "" {
		fh, err := os.Open(f)
		if err != nil {
			return refArgs{}, usageError("--refs-from: %v", err)
		}
		defer fh.Close()
		if err := readLines(fh, f); err != nil {
			return refArgs{}, err
		}
	}
	out := refArgs{plain: refs, deps: deps, globs: globs}
	if len(elements) > 0 {
		els, err := elementRefs(c, deps, elements, weak)
		if err != nil {
			return refArgs{}, err
		}
		out.elements = map[string]string{}
		if weak {
			out.weak = map[string]string{}
		}
		for _, el := range els {
			out.resolved = append(out.resolved, el.Ref())
			out.elements[el.Ref()] = el.Name
			if w := el.WeakRef(); w != "" {
				out.weak[el.Ref()] = w
				out.elements[w] = el.Name
			}
		}
	}
	if out.count() == 0 && required {
		return refArgs{}, usageError("no refs given (arguments, - for stdin, or --refs-from FILE)")
	}
	return out, nil
}

// elementRefs resolves element names with bst show in the project, with
// their dependencies as --deps selects, and their weak keys when weak.
func elementRefs(c *cli.Context, deps buildstream.Deps, elements []string, weak bool) ([]buildstream.Element, error) {
	dir := c.String("project")
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return nil, err
		}
		if dir = buildstream.FindProject(wd); dir == "" {
			return nil, usageError("%s: element names need a BuildStream project: run in one or give --project DIR", strings.Join(elements, " "))
		}
	}
	els, err := buildstream.Show(c.Context, dir, deps, elements, buildstream.ShowOptions{WeakKeys: weak})
	if errors.Is(err, buildstream.ErrNoBst) {
		return nil, usageError("%s: element names are resolved by running bst: %v", strings.Join(elements, " "), err)
	}
	if err != nil {
		return nil, usageError("%v", err)
	}
	return els, nil
}

// transferEnv loads the environment of a transfer command and checks
// --kind against the format. With no format set, artifacts are
// cache.KindArtifact: looked up as either format.
func transferEnv(c *cli.Context) (*env, cache.Kind, error) {
	e, err := newEnv(c)
	if err != nil {
		return nil, "", err
	}
	kind, err := transferKind(c, e)
	if kind == cache.KindSource {
		e.cfg.Caches = e.cfg.SourceCaches
	}
	return e, kind, err
}

// localEnv is transferEnv for the commands that work on the local store
// (du, verify, rm, checkout): they read every kind of artifact it holds,
// whatever the format.
func localEnv(c *cli.Context) (*env, cache.Kind, error) {
	e, kind, err := transferEnv(c)
	if err == nil && kind != cache.KindSource {
		kind = cache.KindArtifact
	}
	return e, kind, err
}

// transferKind checks --kind against the format.
func transferKind(c *cli.Context, e *env) (cache.Kind, error) {
	k := cache.Kind(c.String("kind"))
	if k != cache.KindArtifact && k != cache.KindSource {
		return "", usageError("--kind must be artifact or source, not %q", k)
	}
	kind, err := transfer.KindFor(e.cfg.Format, k)
	if err != nil {
		return "", usageError("--kind %s: %v", k, err)
	}
	return kind, nil
}

// progress draws a bar on stderr when it is a terminal and the output
// settings allow it; otherwise it does nothing. The bar counts bytes: its
// total grows as trees become known, it moves as chunks arrive, and it
// shows the rate, the refs done and, once the total has settled, the time
// left.
type progress struct {
	mu      sync.Mutex
	bar     *progressbar.ProgressBar
	what    string
	refs    int // results the run will have: refs (times targets)
	done    int
	planned int64
	moved   int64
	now     func() time.Time
	// grown is when the total last grew; first when the first byte moved.
	grown, first time.Time
}

// settle is how long the total must stay the same before the bar shows the
// time left: while trees are still being read the total grows, and a time
// left computed from it would be too short.
const settle = 3 * time.Second

func newProgress(c *cli.Context, e *env, what string) *progress {
	f, ok := e.stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) || e.quiet || e.json || c.Bool("no-progress") {
		return &progress{what: what}
	}
	return newBar(e.stderr, what, time.Now)
}

// newBar is a progress drawn on w, with now as its clock.
func newBar(w io.Writer, what string, now func() time.Time) *progress {
	p := &progress{what: what, now: now}
	p.bar = progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(p.describe()),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionUseIECUnits(true),
		// The bar's own time left follows its total even while that
		// grows: describe shows one from a settled total instead.
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionFullWidth(),
		progressbar.OptionClearOnFinish(),
	)
	return p
}

// expect sets how many results the run will have, once refs are expanded.
func (p *progress) expect(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refs = n
	if p.bar != nil {
		p.bar.Describe(p.describe())
	}
}

func (p *progress) describe() string {
	s := fmt.Sprintf("%s %d/%d refs", p.what, p.done, p.refs)
	if left, ok := p.timeLeft(); ok {
		s += fmt.Sprintf(", %s left", left)
	}
	return s
}

// timeLeft is what remains of the total at the rate since the first byte,
// once the total has not grown for settle.
func (p *progress) timeLeft() (time.Duration, bool) {
	if p.now == nil || p.first.IsZero() || p.moved == 0 {
		return 0, false
	}
	now := p.now()
	if now.Sub(p.grown) < settle {
		return 0, false
	}
	rate := float64(p.moved) / now.Sub(p.first).Seconds()
	return time.Duration(float64(p.planned-p.moved) / rate * float64(time.Second)).Round(time.Second), true
}

// plan adds bytes the run has to move to the bar's total.
func (p *progress) plan(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.planned += n
	p.grown = p.now()
	p.resize()
}

// resize sets the bar's total to what is planned. The bar ends for good
// once it reaches its total, and more trees may still come: its total
// stays a byte ahead until finish.
func (p *progress) resize() {
	p.bar.ChangeMax64(max(p.planned, p.moved) + 1)
}

// add moves the bar by bytes that arrived or left.
func (p *progress) add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.first.IsZero() {
		p.first = p.now()
	}
	p.moved += n
	if p.moved >= p.planned {
		// A retried stream sends some bytes twice: the total follows.
		p.planned = p.moved
		p.resize()
	}
	p.bar.Describe(p.describe())
	p.bar.Set64(p.moved)
}

func (p *progress) refDone() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	p.bar.Describe(p.describe())
}

// warn prints a warning without tearing the bar.
func (p *progress) warn(e *env, msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Clear()
	}
	e.warnf("%s", msg)
}

// above runs print, which writes lines to the terminal, with the bar off
// its line: the lines start at the line's beginning and the bar, drawn
// again at its next move, stays below them.
func (p *progress) above(print func() error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Clear()
	}
	return print()
}

func (p *progress) finish() {
	if p.bar != nil {
		p.bar.Finish()
	}
}

// report is a transfer's result in the JSON document.
type report struct {
	Refs []transfer.Result `json:"refs"`
	transfer.Stats
	// Caches are what each cache did, in priority order.
	Caches []cacheUse `json:"caches"`
}

// cacheUse is what one cache did in a run: the refs it served (as a
// source) or took (as a target), and the blobs, bytes, errors and seconds
// the engine counted.
type cacheUse struct {
	transfer.CacheUsage
	Refs int `json:"refs"`
}

// servedBy counts the refs each cache served (as a source) or took (as a
// target) in results.
func servedBy(results []transfer.Result) map[string]int {
	seen := map[[2]string]bool{}
	out := map[string]int{}
	add := func(cache, ref string) {
		if k := [2]string{cache, ref}; !seen[k] {
			seen[k] = true
			out[cache]++
		}
	}
	for _, r := range results {
		if r.Status != transfer.StatusDone && r.Status != transfer.StatusRepaired {
			continue
		}
		add(r.Cache, r.Ref)
		if r.Target != "" {
			add(r.Target, r.Ref)
		}
	}
	return out
}

// writeCacheTable prints -v's table of what each cache did.
func writeCacheTable(w io.Writer, uses []cacheUse) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "cache\trefs\tblobs\tbytes\terrors\tseconds")
	for _, u := range uses {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%.1f\n", u.Name, u.Refs, u.Blobs, humanBytes(u.Bytes), u.Errors, u.Seconds)
	}
	tw.Flush()
}

// runReport is a transfer's report as it goes: each batch of results is
// printed on stdout (or streamed into the JSON document) and counted, then
// forgotten, so a run of a million refs holds a batch of results at a
// time. Refs come in batches once each (refArgs.each): what a cache served
// adds up across them.
type runReport struct {
	c       *cli.Context
	e       *env
	p       *progress
	command string
	// named: the user named elements, shown beside their refs.
	named   bool
	counts  map[string]int
	results int
	stats   transfer.Stats
	served  map[string]int
}

// newReport starts the report of a run; named says whether elements were
// named.
func newReport(c *cli.Context, e *env, p *progress, command string, named bool) (*runReport, error) {
	r := &runReport{c: c, e: e, p: p, command: command, named: named, counts: map[string]int{}, served: map[string]int{}}
	for _, s := range []transfer.Status{transfer.StatusDone, transfer.StatusSkipped, transfer.StatusMissing, transfer.StatusFailed, transfer.StatusConflict} {
		r.counts[string(s)] = 0 // the usual counts, zeros included
	}
	if e.json {
		return r, e.out.stream(e.stdout, "refs", report{Refs: []transfer.Result{}, Caches: []cacheUse{}})
	}
	return r, nil
}

// add reports a batch of results, and what moving them cost.
func (r *runReport) add(results []transfer.Result, st transfer.Stats) error {
	r.results += len(results)
	r.stats.Add(st)
	for s, n := range transfer.Summary(results) {
		r.counts[string(s)] += n
	}
	for c, n := range servedBy(results) {
		r.served[c] += n
	}
	if r.e.json {
		for _, res := range results {
			if err := r.e.out.item(res); err != nil {
				return err
			}
		}
		return nil
	}
	// Results on stdout (pull 2>/dev/null still prints them); the
	// totals, like progress and warnings, on stderr. Columns line up
	// within a batch.
	return r.p.above(func() error { return r.print(results) })
}

// print writes a batch's result lines.
func (r *runReport) print(results []transfer.Result) error {
	tw := tabwriter.NewWriter(r.e.stdout, 0, 4, 2, ' ', 0)
	for _, res := range results {
		if r.e.quiet && (res.Status == transfer.StatusDone || res.Status == transfer.StatusSkipped) {
			continue
		}
		where := res.Cache
		if res.Target != "" {
			where = strings.TrimPrefix(where+" -> "+res.Target, " -> ")
		}
		if r.named {
			// The element beside its ref, when the user named elements.
			fmt.Fprintf(tw, "%s\t%s\t", res.Status, dash(res.Element))
		} else {
			fmt.Fprintf(tw, "%s\t", res.Status)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", res.Ref, dash(where), res.Reason)
	}
	return tw.Flush()
}

// finish ends a transfer: it takes the progress bar down, prints the
// summary (stderr, or JSON on stdout) with what each of caches did, and
// chooses the error: refs missing everywhere (exit 3) only when nothing
// else failed.
func (r *runReport) finish(caches []*transfer.Cache) error {
	c, e, command, counts := r.c, r.e, r.command, r.counts
	r.p.finish()
	uses := []cacheUse{}
	for _, cc := range caches {
		uses = append(uses, cacheUse{CacheUsage: cc.Usage(), Refs: r.served[cc.Name()]})
	}
	if e.json {
		writeJSON(e, report{Refs: []transfer.Result{}, Stats: r.stats, Caches: uses}, counts)
	} else if !e.quiet {
		line := countLine(command, counts)
		if command != "rm" {
			line += "; " + movedLine(command, r.stats)
		}
		if command == "sync" && counts["skipped"] == r.results {
			// A second run says that it had nothing to do.
			line = "in step, nothing to move: " + line
		}
		fmt.Fprintf(e.stderr, "%s: %s; %.1fs\n", command, line, r.stats.Seconds)
		if e.verbose && len(uses) > 0 {
			writeCacheTable(e.stderr, uses)
		}
	}
	switch {
	case c.Context.Err() != nil:
		done := counts["done"] + counts["skipped"] + counts["repaired"]
		return &worded{fmt.Sprintf("%s interrupted: %s done, %s not", command, words.Plural(done, "ref"),
			words.Plural(r.results-done, "ref")), c.Context.Err()}
	case counts["failed"]+counts["conflict"] > 0:
		var parts []string
		if n := counts["failed"]; n > 0 {
			parts = append(parts, words.Plural(n, "ref")+" failed")
		}
		if n := counts["conflict"]; n > 0 {
			parts = append(parts, words.Plural(n, "conflict"))
		}
		return fmt.Errorf("%s: %s", command, strings.Join(parts, ", "))
	case counts["missing"] > 0 && c.Bool("ignore-missing"):
		return nil
	case counts["missing"] > 0:
		return refsMissing("%s: %s %s", command, words.IsAre(counts["missing"], "ref"), missingWhere(command))
	}
	return nil
}

// missingWhere says where a command looked for the refs it reports
// missing.
func missingWhere(command string) string {
	switch command {
	case "rm", "push":
		return "not in the local store"
	case "copy", "sync":
		return "in none of the caches copied from"
	}
	return "in no cache"
}

// countLine lists the statuses that occurred in a run; a transfer always
// says how many refs are done, even none.
func countLine(command string, counts map[string]int) string {
	var parts []string
	for _, s := range []transfer.Status{transfer.StatusDone, transfer.StatusRepaired, transfer.StatusSkipped,
		transfer.StatusWouldPull, transfer.StatusWouldPush, transfer.StatusWouldCopy, transfer.StatusWouldRepair,
		transfer.StatusMissing, transfer.StatusFailed, transfer.StatusConflict, transfer.StatusInterrupted, transfer.StatusRemoved, transfer.StatusWouldRemove} {
		n := counts[string(s)]
		if n > 0 || s == transfer.StatusDone && command != "rm" {
			parts = append(parts, fmt.Sprintf("%d %s", n, s))
		}
	}
	return strings.Join(parts, ", ")
}

// movedLine says what moved, each way the command moves blobs, or for a
// dry run what would.
func movedLine(command string, st transfer.Stats) string {
	var parts []string
	if command != "push" {
		parts = append(parts, fmt.Sprintf("%s (%s) pulled", words.Plural(st.Pulled.Blobs, "blob"), humanBytes(st.Pulled.Bytes)))
	}
	if command != "pull" {
		parts = append(parts, fmt.Sprintf("%s (%s) pushed", words.Plural(st.Pushed.Blobs, "blob"), humanBytes(st.Pushed.Bytes)))
	}
	line := fmt.Sprintf("%s, %d already present", strings.Join(parts, ", "), st.BlobsPresent)
	if st.WouldBlobs > 0 {
		line += fmt.Sprintf(", %s (%s) would be transferred", words.Plural(st.WouldBlobs, "blob"), humanBytes(st.WouldBytes))
	}
	return line
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// pool holds one transfer.Cache per configured cache, so that a cache
// in several roles (source, storage, target) is dialled and probed once.
type pool struct {
	cfg     *config.Config
	all     []*transfer.Cache
	closers []func()
}

func newPool(cfg *config.Config) *pool {
	return &pool{cfg: cfg, all: transfer.NewCaches(cfg.Caches, cfg.Bwlimit)}
}

// named picks caches by configured name, in the order given.
func (p *pool) named(names []string) []*transfer.Cache {
	var out []*transfer.Cache
	for _, n := range names {
		for _, c := range p.all {
			if c.Name() == n {
				out = append(out, c)
			}
		}
	}
	return out
}

// where picks caches in priority order.
func (p *pool) where(keep func(*transfer.Cache) bool) []*transfer.Cache {
	var out []*transfer.Cache
	for _, c := range p.all {
		if keep(c) {
			out = append(out, c)
		}
	}
	return out
}

// storage is every configured cache readers take blobs from.
func (p *pool) storage() []*transfer.Cache {
	return p.where(func(c *transfer.Cache) bool { return c.Config.Type.HasStorage() })
}

// close closes every connection and releases the store's lock; it may be
// called again.
func (p *pool) close() {
	transfer.Close(p.all)
	p.all = nil
	for _, f := range p.closers {
		f()
	}
	p.closers = nil
}

// engine builds a transfer engine over caches (sources, or push targets)
// with the pool's storage caches for readers.
func engine(c *cli.Context, e *env, kind cache.Kind, pl *pool, caches []*transfer.Cache, p *progress) (*transfer.Engine, error) {
	open := e.openStore
	if c.Command.Name == "which" || c.Bool("dry-run") || c.Command.Name == "verify" && !c.Bool("repair") {
		open = e.readStore
	}
	store, err := open()
	if err != nil {
		return nil, err
	}
	if !store.ReadOnly() {
		// A gc must not remove what this run writes before it names it.
		unlock, err := store.Lock(c.Context, false, func() { e.warnf("waiting for a gc of %s to finish", store.Root()) })
		if err != nil {
			return nil, err
		}
		pl.closers = append(pl.closers, unlock)
	}
	ev := transfer.Events{
		OnWarn: func(msg string) {
			// Once interrupted, a cache's "failure" is the interruption
			// itself: the error line says so, -v keeps the details.
			if c.Context.Err() != nil {
				e.debugf("%s", msg)
				return
			}
			p.warn(e, msg)
		},
		OnInfo: func(msg string) { e.debugf("%s", msg) },
	}
	if p.bar != nil {
		// Without a bar, the engine keeps no tally for it.
		ev.OnRef, ev.OnPlan, ev.OnBytes = func(transfer.Result) { p.refDone() }, p.plan, p.add
	}
	if c.Bool("strict") {
		e.warnf("--strict is deprecated: it means --fail-on-cache-error (BuildStream's strict mode is the default; pull --no-strict turns it off)")
	}
	return &transfer.Engine{
		Store: store, Kind: kind, Caches: caches, Storage: pl.storage(), Jobs: e.cfg.Jobs,
		Strict: c.Bool("fail-on-cache-error") || c.Bool("strict"), WithBuildtrees: c.Bool("with-buildtrees"), Events: ev,
	}, nil
}
