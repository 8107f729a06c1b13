package commands

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/words"
)

// Errors that main maps to exit codes.
var (
	// ErrUsage: bad flags, arguments or command (exit 2).
	ErrUsage = errors.New("usage error")
	// ErrRefsMissing: one or more refs were found in no cache (exit 3).
	ErrRefsMissing = errors.New("refs missing from every cache")
)

// worded is an error with words of its own that still is another error
// for errors.Is (and so for exit codes): a sentinel's or Go's wording is
// not repeated after what the message already says.
type worded struct {
	msg string
	is  error
}

func (e *worded) Error() string { return e.msg }
func (e *worded) Unwrap() error { return e.is }

// refsMissing is an ErrRefsMissing (exit 3) that says where refs were not
// found.
func refsMissing(format string, args ...any) error {
	return &worded{fmt.Sprintf(format, args...), ErrRefsMissing}
}

// noCache is the error for a cache name that is not configured: it lists
// the names, the nearest first when one is close.
func noCache(cfg *config.Config, name string) error {
	var names []string
	for _, c := range cfg.Caches {
		names = append(names, c.Name)
	}
	if len(names) == 0 {
		return usageError("no cache named %q: no cache is configured (see bst-cache config)", name)
	}
	if near := words.Closest(name, names); near != "" {
		return usageError("no cache named %q: did you mean %s? (the caches: %s)", name, near, strings.Join(names, ", "))
	}
	return usageError("no cache named %q (the caches: %s)", name, strings.Join(names, ", "))
}

// usageError wraps ErrUsage with a message.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}

// NewApp builds the command line.
func NewApp(version string, stdout, stderr io.Writer) *cli.App {
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Usage: "print the version, the commit and the Go version"}
	cli.VersionPrinter = func(c *cli.Context) { fmt.Fprintln(c.App.Writer, versionLine(c.App.Version)) }
	app := &cli.App{
		Name:      "bst-cache",
		Usage:     "pull, push and copy BuildStream artifacts across a priority list of caches",
		Version:   version,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", EnvVars: []string{"BST_CACHE_CONFIG"}, Usage: "read this configuration file only (default: the user file and the project's bst-cache.toml)", TakesFile: true},
			&cli.StringFlag{Name: "local", EnvVars: []string{"BST_CACHE_LOCAL"}, Usage: "local store directory (default: in a BuildStream project its cache, else the configuration's, else ~/.cache/bst-cache)", TakesFile: true},
			&cli.StringFlag{Name: "format", EnvVars: []string{"BST_CACHE_FORMAT"}, Usage: "BuildStream artifact format refs name: bst1 or bst2 (default: the configuration's, else the project's; else each ref is looked up as both at once)"},
			&cli.BoolFlag{Name: "json", EnvVars: []string{"BST_CACHE_JSON"}, Usage: "print results as JSON on stdout"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, EnvVars: []string{"BST_CACHE_QUIET"}, Usage: "print only warnings and errors on stderr"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, EnvVars: []string{"BST_CACHE_VERBOSE"}, Usage: "log more on stderr"},
			&cli.IntFlag{Name: "jobs", EnvVars: []string{"BST_CACHE_JOBS"}, Usage: "refs moving bytes at once (32 times as many are looked up ahead)", DefaultText: "from the configuration, else 8"},
			&cli.StringFlag{Name: "bwlimit", EnvVars: []string{"BST_CACHE_BWLIMIT"}, Usage: "cap the transfer rate over all caches together: bytes per second (10M, 10MiB/s, 500KB/s) or bits (100Mbit); each cache's bandwidth key caps it alone", DefaultText: "no cap"},
			&cli.BoolFlag{Name: "no-progress", EnvVars: []string{"BST_CACHE_NO_PROGRESS"}, Usage: "never draw progress bars"},
		},
		Commands: []*cli.Command{
			configCommand(),
			cachesCommand(),
			lsCommand(),
			serveCommand(),
			pullCommand(),
			pushCommand(),
			copyCommand(),
			syncCommand(),
			whichCommand(),
			checkoutCommand(),
			rmCommand(),
			duCommand(),
			verifyCommand(),
			gcCommand(),
			versionCommand(),
			completionCommand(),
			manCommand(),
		},
		// main prints errors and chooses exit codes; the library never exits.
		ExitErrHandler: func(*cli.Context, error) {},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				name := c.Args().First()
				if near := words.Closest(name, commandNames(c.App)); near != "" {
					return usageError("no command %q: did you mean %s?", name, near)
				}
				return usageError("no command %q", name)
			}
			return cli.ShowAppHelp(c)
		},
	}
	out := &output{}
	app.Metadata = map[string]any{outputKey: out}
	app.Before = func(c *cli.Context) error {
		out.json = c.Bool("json")
		if name := c.Args().First(); app.Command(name) != nil {
			out.command = app.Command(name).Name
		}
		return nil
	}
	app.OnUsageError = func(c *cli.Context, err error, _ bool) error { return flagError(app, c, err) }
	for _, cmd := range app.Commands {
		cmd.OnUsageError = app.OnUsageError
	}
	return app
}

// flagError says which commands take an unknown flag.
func flagError(app *cli.App, c *cli.Context, err error) error {
	msg := err.Error()
	name, ok := strings.CutPrefix(msg, "flag provided but not defined: ")
	if !ok {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	flag := "--" + strings.TrimLeft(name, "-")
	where := "bst-cache"
	if c != nil && c.Command != nil && c.Command.Name != "" {
		where = "bst-cache " + c.Command.Name
	}
	var takers []string
	for _, cmd := range app.Commands {
		if _, ok := flagArity(cmd.Flags)[flag]; ok {
			takers = append(takers, cmd.Name)
		}
	}
	if len(takers) == 0 {
		flags := app.Flags
		if c != nil && c.Command != nil {
			flags = append(append([]cli.Flag{}, c.Command.Flags...), app.Flags...)
		}
		var names []string
		for name := range flagArity(flags) {
			if strings.HasPrefix(name, "--") {
				names = append(names, name)
			}
		}
		sort.Strings(names) // the same suggestion every time
		if near := words.Closest(flag, names); near != "" {
			return usageError("%s has no flag %s: did you mean %s?", where, flag, near)
		}
		return usageError("%s has no flag %s", where, flag)
	}
	takes := "takes"
	if len(takers) > 1 {
		takes = "take"
	}
	return usageError("%s has no flag %s (%s %s it)", where, flag, strings.Join(takers, ", "), takes)
}

func commandNames(app *cli.App) []string {
	var out []string
	for _, c := range app.Commands {
		out = append(out, c.Name)
	}
	return out
}

// env is what every command works with: the resolved configuration and the
// output settings.
type env struct {
	cfg     *config.Config
	stdout  io.Writer
	stderr  io.Writer
	json    bool
	quiet   bool
	verbose bool
	out     *output
}

// newEnv loads the configuration and applies the global flags over it.
func newEnv(c *cli.Context) (*env, error) {
	project := ""
	if c.IsSet("project") {
		dir, err := filepath.Abs(expandHome(c.String("project")))
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(filepath.Join(dir, "project.conf")); err != nil {
			return nil, usageError("--project %s: no project.conf there", dir)
		}
		project = dir
	}
	cfg, err := config.Load(config.Options{File: c.String("config"), WorkDir: project})
	if err != nil {
		return nil, err
	}
	if f := c.String("format"); f != "" {
		if cfg.Format, err = cache.ParseFormat(f); err != nil {
			return nil, fmt.Errorf("--format: %w: %v", config.ErrInvalid, err)
		}
		cfg.FormatFrom = "--format"
	}
	if l := c.String("local"); l != "" {
		if cfg.Local, err = filepath.Abs(expandHome(l)); err != nil {
			return nil, err
		}
		cfg.LocalFrom = "--local"
	}
	if c.IsSet("jobs") {
		j := c.Int("jobs")
		if j < 1 || j > 1024 {
			return nil, usageError("--jobs must be between 1 and 1024, not %d", j)
		}
		cfg.Jobs = j
	}
	if b := c.String("bwlimit"); b != "" {
		if cfg.Bwlimit, err = config.ParseRate(b); err != nil {
			return nil, usageError("--bwlimit: %v: want a rate like 10MiB/s or 100Mbit", err)
		}
	}
	return &env{
		cfg:     cfg,
		stdout:  c.App.Writer,
		stderr:  c.App.ErrWriter,
		json:    c.Bool("json"),
		quiet:   c.Bool("quiet"),
		verbose: c.Bool("verbose") && !c.Bool("quiet"),
		out:     outputOf(c.App),
	}, nil
}

func expandHome(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		home, _ := os.UserHomeDir()
		return filepath.Join(home, p[1:])
	}
	return p
}

// openStore opens the local store for a command that writes to it.
func (e *env) openStore() (*cache.Store, error) {
	return cache.Open(e.cfg.Local, e.cfg.Format)
}

// readStore opens the local store for a command that only reads: nothing
// is created, and a store that does not exist reads as empty.
func (e *env) readStore() (*cache.Store, error) {
	return cache.OpenReadOnly(e.cfg.Local, e.cfg.Format)
}

// warnf prints a warning on stderr and keeps it for the JSON document.
func (e *env) warnf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	e.out.warn(msg)
	fmt.Fprintf(e.stderr, "bst-cache: warning: %s\n", msg)
}

// debugf prints on stderr with --verbose.
func (e *env) debugf(format string, args ...any) {
	if e.verbose {
		fmt.Fprintf(e.stderr, "bst-cache: "+format+"\n", args...)
	}
}
