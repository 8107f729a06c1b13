package commands

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// versionLine is what version and --version print: the version, the commit
// the binary was built from and the Go version.
func versionLine(version string) string {
	commit := "unknown"
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					commit += " (modified)"
				}
			}
		}
	}
	return fmt.Sprintf("bst-cache %s, commit %s, %s", version, commit, runtime.Version())
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, the commit and the Go version",
		Action: func(c *cli.Context) error {
			fmt.Fprintln(c.App.Writer, versionLine(c.App.Version))
			return nil
		},
	}
}
