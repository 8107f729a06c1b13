package commands

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// reorder lets flags stand anywhere, as users of rclone or crane expect:
// global flags before or after the command, command flags before or after
// the arguments. The command line parser stops at the first argument, so
// the flags are moved in front: global flags before the command, its own
// flags right after it, the arguments last. "--" ends the flags (what
// follows is arguments, even "-x"); "-" is an argument (stdin). Unknown
// flags stay where they are, for the parser to name.
func reorder(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	global := flagArity(app.Flags)
	var globals, rest []string
	cmd := ""
	i := 1
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if takes, ok := lookupFlag(global, a); ok {
			globals = append(globals, a)
			if takes && !strings.Contains(a, "=") && i+1 < len(args) {
				i++
				globals = append(globals, args[i])
			}
			continue
		}
		if cmd == "" && !isFlag(a) {
			cmd = a
			continue
		}
		rest = append(rest, a)
	}
	tail := args[i:] // "--" and after
	c := app.Command(cmd)
	if c == nil {
		return append(append(append([]string{args[0]}, globals...), nonEmpty(cmd)...), append(rest, tail...)...)
	}
	own := flagArity(c.Flags)
	var flags, positional []string
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		if takes, ok := lookupFlag(own, a); ok {
			flags = append(flags, a)
			if takes && !strings.Contains(a, "=") && j+1 < len(rest) {
				j++
				flags = append(flags, rest[j])
			}
			continue
		}
		if isFlag(a) {
			flags = append(flags, a) // unknown: the parser names it
			continue
		}
		positional = append(positional, a)
	}
	out := append([]string{args[0]}, globals...)
	out = append(append(out, cmd), flags...)
	if len(positional) > 0 || len(tail) > 0 {
		if len(tail) == 0 {
			tail = []string{"--"} // arguments stay arguments
		}
		out = append(append(out, tail[0]), positional...)
		out = append(out, tail[1:]...)
	}
	return out
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

func isFlag(a string) bool { return len(a) > 1 && a[0] == '-' }

// flagArity maps each flag name (with its dashes) to whether it takes a
// value.
func flagArity(flags []cli.Flag) map[string]bool {
	out := map[string]bool{}
	for _, f := range flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			dash := "--"
			if len(n) == 1 {
				dash = "-"
			}
			out[dash+n] = !isBool
			out["-"+n] = !isBool
		}
	}
	return out
}

// lookupFlag finds a (possibly --name=value) argument among flags.
func lookupFlag(flags map[string]bool, a string) (takesValue, ok bool) {
	if !isFlag(a) {
		return false, false
	}
	name, _, _ := strings.Cut(a, "=")
	takesValue, ok = flags[name]
	return takesValue, ok
}
