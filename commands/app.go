package commands

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
)

// Errors that main maps to exit codes.
var (
	// ErrUsage: bad flags, arguments or command (exit 2).
	ErrUsage = errors.New("usage error")
	// ErrRefsMissing: one or more refs were found in no cache (exit 3).
	ErrRefsMissing = errors.New("refs missing from every cache")
)

// usageError wraps ErrUsage with a message.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}

// NewApp builds the command line.
func NewApp(version string, stdout, stderr io.Writer) *cli.App {
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Usage: "print the version and exit"}
	app := &cli.App{
		Name:      "bst-cache",
		Usage:     "pull, push and copy BuildStream artifacts across a priority list of caches",
		Version:   version,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", EnvVars: []string{"BST_CACHE_CONFIG"}, Usage: "read this configuration file only (default: the user file and the project's bst-cache.toml)", TakesFile: true},
			&cli.StringFlag{Name: "local", Usage: "local store directory (default from the configuration, else ~/.cache/bst-cache)", TakesFile: true},
			&cli.StringFlag{Name: "format", Usage: "BuildStream artifact format refs name: bst1 or bst2 (default from the configuration, else bst2)"},
			&cli.BoolFlag{Name: "json", Usage: "print results as JSON on stdout"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only warnings and errors on stderr"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log more on stderr"},
			&cli.IntFlag{Name: "jobs", Usage: "transfers in flight at once", DefaultText: "from the configuration, else 8"},
			&cli.BoolFlag{Name: "no-progress", Usage: "never draw progress bars"},
		},
		Commands: []*cli.Command{
			configCommand(),
			cachesCommand(),
			lsCommand(),
			serveCommand(),
			pullCommand(),
			pushCommand(),
			copyCommand(),
			whichCommand(),
			checkoutCommand(),
			rmCommand(),
			duCommand(),
			verifyCommand(),
			gcCommand(),
		},
		// main prints errors and chooses exit codes; the library never exits.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return fmt.Errorf("%w: %v", ErrUsage, err)
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError("no command %q (see bst-cache --help)", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
	}
	for _, cmd := range app.Commands {
		cmd.OnUsageError = app.OnUsageError
	}
	return app
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
		if cfg.Format, err = config.ParseFormat(f); err != nil {
			return nil, fmt.Errorf("--format: %w", err)
		}
		cfg.FormatFrom = "--format"
	}
	if l := c.String("local"); l != "" {
		if cfg.Local, err = filepath.Abs(expandHome(l)); err != nil {
			return nil, err
		}
		cfg.LocalFrom = "--local"
	}
	if err := matchLayout(cfg, c.String("format") != ""); err != nil {
		return nil, err
	}
	if c.IsSet("jobs") {
		j := c.Int("jobs")
		if j < 1 || j > 1024 {
			return nil, usageError("--jobs must be between 1 and 1024, not %d", j)
		}
		cfg.Jobs = j
	}
	return &env{
		cfg:     cfg,
		stdout:  c.App.Writer,
		stderr:  c.App.ErrWriter,
		json:    c.Bool("json"),
		quiet:   c.Bool("quiet"),
		verbose: c.Bool("verbose") && !c.Bool("quiet"),
	}, nil
}

func expandHome(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		home, _ := os.UserHomeDir()
		return filepath.Join(home, p[1:])
	}
	return p
}

// layout is the local store layout for the configured format.
func (e *env) layout() cache.Layout {
	if e.cfg.Format == config.FormatBst1 {
		return cache.LayoutBst1
	}
	return cache.LayoutBst2
}

// matchLayout makes the format follow an existing local store: a
// BuildStream 1 store holds bst1 refs, a BuildStream 2 one bst2 refs. A
// format set explicitly that the store cannot hold is an error, never a
// silent miss.
func matchLayout(cfg *config.Config, flagSet bool) error {
	layout, ok := cache.DetectLayout(cfg.Local)
	if !ok {
		return nil
	}
	format := config.FormatBst2
	if layout == cache.LayoutBst1 {
		format = config.FormatBst1
	}
	switch {
	case !flagSet && !cfg.FormatSet:
		if cfg.Format != format {
			cfg.Format, cfg.FormatFrom = format, "the layout of the local store "+cfg.Local
		}
	case cfg.Format != format:
		return usageError("the local store %s has BuildStream %s's layout and holds %s refs, not %s: use --format %s or another --local", cfg.Local, strings.TrimPrefix(string(format), "bst"), format, cfg.Format, format)
	}
	return nil
}

// openStore opens the local store for a command that writes to it.
func (e *env) openStore() (*cache.Store, error) {
	return cache.Open(e.cfg.Local, e.layout())
}

// readStore opens the local store for a command that only reads: nothing
// is created, and a store that does not exist reads as empty.
func (e *env) readStore() (*cache.Store, error) {
	return cache.OpenReadOnly(e.cfg.Local, e.layout())
}

// warnf prints a warning on stderr.
func (e *env) warnf(format string, args ...any) {
	fmt.Fprintf(e.stderr, "bst-cache: warning: "+format+"\n", args...)
}

// debugf prints on stderr with --verbose.
func (e *env) debugf(format string, args ...any) {
	if e.verbose {
		fmt.Fprintf(e.stderr, "bst-cache: "+format+"\n", args...)
	}
}
