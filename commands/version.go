package commands

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// buildVersion is what version prints: the version, the commit the
// binary was built from and the Go version.
type buildVersion struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	Go      string `json:"go"`
}

// versionLine is what version and --version print.
func versionLine(version string) string {
	v := versionOf(version)
	return fmt.Sprintf("bst-cache %s, commit %s, %s", v.Version, v.Commit, v.Go)
}

func versionOf(version string) buildVersion {
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
	return buildVersion{Version: version, Commit: commit, Go: runtime.Version()}
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, the commit and the Go version",
		Action: func(c *cli.Context) error {
			if c.Bool("json") {
				v := versionOf(c.App.Version)
				outputOf(c.App).setResult(v, nil)
				return nil
			}
			fmt.Fprintln(c.App.Writer, versionLine(c.App.Version))
			return nil
		},
	}
}
