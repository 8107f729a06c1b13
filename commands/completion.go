package commands

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/config"
)

// Shell completion asks bst-cache for the words that may follow through a
// hidden entry point that Main answers before any command is looked at:
//
//	bst-cache __complete WORD... CURRENT
//
// prints the candidates for CURRENT, one a line, and does nothing else: no
// command runs, no cache is contacted, no store is opened (cache names come
// from the configuration files alone). urfave/cli's own
// --generate-bash-completion, which older scripts send, is answered the
// same way wherever it stands: as a request to complete the words before
// it, never as an argument of a command.
const (
	completeEntry  = "__complete"
	legacyComplete = "--generate-bash-completion"
)

// completionRequest says whether args (args[0] is the program) ask for
// completion, and if so the words typed before the one being completed.
func completionRequest(args []string) (words []string, cur string, ok bool) {
	if len(args) > 1 && args[1] == completeEntry {
		if len(args) == 2 {
			return nil, "", true
		}
		return args[2 : len(args)-1], args[len(args)-1], true
	}
	for i, a := range args {
		if i > 0 && a == legacyComplete {
			return args[1:i], "", true
		}
	}
	return nil, "", false
}

// complete lists the candidates for cur after words: flags when cur starts
// with "-", the values of the flag before it, else the commands, or the
// shells after "completion". Nothing means: let the shell complete file
// names.
func complete(app *cli.App, words []string, cur string) []string {
	var cmd *cli.Command
	arity := flagArity(app.Flags)
	dashes := false
	for i := 0; i < len(words); i++ {
		w := words[i]
		switch {
		case dashes:
		case w == "--":
			dashes = true
		case isFlag(w):
			if takes, _ := lookupFlag(arity, w); takes && !strings.Contains(w, "=") {
				i++
			}
		case cmd == nil:
			if cmd = app.Command(w); cmd == nil {
				return nil
			}
			arity = flagArity(append(append([]cli.Flag{}, cmd.Flags...), app.Flags...))
		}
	}
	if flag, prefix, ok := valueOf(arity, words, cur); ok {
		return withPrefix(prefix, matching(flagValues(flag, words), strings.TrimPrefix(cur, prefix)))
	}
	switch {
	case !dashes && isFlag(cur) || cur == "-":
		var names []string
		for name := range arity {
			if strings.HasPrefix(name, "--") || len(name) == 2 {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		return matching(names, cur)
	case cmd == nil:
		var names []string
		for _, c := range app.Commands {
			if !c.Hidden {
				names = append(names, c.Name)
			}
		}
		return matching(names, cur)
	case cmd.Name == "completion":
		return matching([]string{"bash", "zsh", "fish"}, cur)
	}
	return nil
}

// valueOf finds the flag whose value cur is: "--to CUR", "--to=CUR", or
// bash's split "--to = CUR". prefix is what cur carries before the value.
func valueOf(arity map[string]bool, words []string, cur string) (flag, prefix string, ok bool) {
	if name, _, found := strings.Cut(cur, "="); found && isFlag(cur) {
		takes, known := arity[name]
		return name, name + "=", takes && known
	}
	n := len(words)
	if n > 1 && words[n-1] == "=" {
		words = words[:n-1]
		n--
	}
	if n == 0 {
		return "", "", false
	}
	takes, known := lookupFlag(arity, words[n-1])
	return strings.TrimLeft(words[n-1], "-"), "", takes && known && !strings.Contains(words[n-1], "=")
}

// flagValues lists what a flag may be set to, when that is known without
// contacting anything: cache names come from the configuration files.
func flagValues(flag string, words []string) []string {
	switch strings.TrimLeft(flag, "-") {
	case "format":
		return []string{"bst1", "bst2"}
	case "kind":
		return []string{"artifact", "source"}
	case "deps":
		return []string{"none", "run", "build", "all"}
	case "from", "to", "cache", "upstream":
		file := os.Getenv("BST_CACHE_CONFIG")
		for i, w := range words {
			if v, ok := strings.CutPrefix(w, "--config="); ok {
				file = v
			} else if w == "--config" && i+1 < len(words) {
				file = words[i+1]
			}
		}
		cfg, err := config.Load(config.Options{File: expandHome(file)})
		if err != nil {
			return nil
		}
		var names []string
		for _, c := range cfg.Caches {
			names = append(names, c.Name)
		}
		return names
	}
	return nil
}

func matching(words []string, prefix string) []string {
	var out []string
	for _, w := range words {
		if strings.HasPrefix(w, prefix) {
			out = append(out, w)
		}
	}
	return out
}

func withPrefix(prefix string, words []string) []string {
	for i := range words {
		words[i] = prefix + words[i]
	}
	return words
}

// bashCompletion asks bst-cache's completion entry point for the words
// that may follow; zsh runs it through bashcompinit.
const bashCompletion = `# bst-cache completion for bash: source <(bst-cache completion bash)
_bst_cache() {
  local IFS=$'\n'
  COMPREPLY=($("${COMP_WORDS[0]}" ` + completeEntry + ` "${COMP_WORDS[@]:1:COMP_CWORD-1}" "${COMP_WORDS[COMP_CWORD]}" 2>/dev/null))
}
complete -o default -F _bst_cache bst-cache
`

// fishCompletion does the same for fish; file names are offered too.
const fishCompletion = `# bst-cache completion for fish: bst-cache completion fish | source
function __bst_cache_complete
    set -l words (commandline -opc)
    command $words[1] ` + completeEntry + ` $words[2..-1] (commandline -ct) 2>/dev/null
end
complete -c bst-cache -a '(__bst_cache_complete)'
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: bash, zsh or fish",
		ArgsUsage: "bash|zsh|fish",
		Description: "bash: source <(bst-cache completion bash)\n" +
			"zsh:  source <(bst-cache completion zsh)\n" +
			"fish: bst-cache completion fish | source\n" +
			"The scripts ask bst-cache for the words that may follow; that runs no command and contacts no cache.",
		Action: func(c *cli.Context) error {
			switch c.Args().First() {
			case "bash":
				fmt.Fprint(c.App.Writer, bashCompletion)
			case "zsh":
				fmt.Fprint(c.App.Writer, "# bst-cache completion for zsh, through bash's\nautoload -U +X bashcompinit && bashcompinit\n"+bashCompletion)
			case "fish":
				fmt.Fprint(c.App.Writer, fishCompletion)
			default:
				return usageError("completion takes bash, zsh or fish")
			}
			return nil
		},
	}
}
func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the manual page (troff), made from the same definitions as --help",
		Hidden: true,
		Action: func(c *cli.Context) error {
			page, err := c.App.ToManWithSection(1)
			if err != nil {
				return err
			}
			fmt.Fprint(c.App.Writer, page)
			return nil
		},
	}
}
