package commands

import (
	"github.com/urfave/cli/v2"
)

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "print the resolved configuration and where each cache came from",
		Description: "Prints the configuration after merging the user file, the project file and the\n" +
			"global flags, as TOML (or JSON with --json). Access tokens are shown as ***.",
		Action: func(c *cli.Context) error {
			e, err := newEnv(c)
			if err != nil {
				return err
			}
			if e.json {
				writeJSON(e, e.cfg.View(), map[string]int{"caches": len(e.cfg.Caches), "source_caches": len(e.cfg.SourceCaches)})
				return nil
			}
			return e.cfg.WriteTOML(e.stdout)
		},
	}
}
