package buildstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Deps is how far a selection follows dependencies, as bst's --deps.
type Deps string

// The dependency selections.
const (
	DepsNone  Deps = "none"  // the elements alone
	DepsRun   Deps = "run"   // and what they need at run time
	DepsBuild Deps = "build" // and what building them needs
	DepsAll   Deps = "all"   // both, transitively
)

// ParseDeps checks a --deps value.
func ParseDeps(s string) (Deps, error) {
	switch d := Deps(s); d {
	case DepsNone, DepsRun, DepsBuild, DepsAll:
		return d, nil
	}
	return "", fmt.Errorf("--deps must be none, run, build or all, not %q", s)
}

// Element is one element bst resolved.
type Element struct {
	// Name is as bst names it: junction.bst:element.bst when junctioned.
	Name string
	// Project is the project it belongs to (a junctioned element's own)
	// and Local its name there.
	Project, Local string
	// Key is its strict cache key: what BuildStream's strict mode (the
	// default) pulls and builds it under.
	Key string
	// WeakKey is its weak cache key (which names its dependencies but not
	// their keys) when Show was asked for it, else "".
	WeakKey string
}

// Ref is the element's artifact ref.
func (e Element) Ref() string { return ArtifactRef(e.Project, e.Local, e.Key) }

// WeakRef is the ref of the element's artifact under its weak key, or ""
// when the weak key is unknown or is the strict key (an element without
// build dependencies).
func (e Element) WeakRef() string {
	if e.WeakKey == "" || e.WeakKey == e.Key {
		return ""
	}
	return ArtifactRef(e.Project, e.Local, e.WeakKey)
}

// ErrNoBst is returned when bst cannot be run.
var ErrNoBst = errors.New("bst (BuildStream) is not installed or not on PATH")

// ShowError is bst refusing to resolve the elements: one it does not know,
// a project it cannot load, sources without a reference.
type ShowError struct {
	Elements []string
	Msg      string
}

func (e *ShowError) Error() string {
	return fmt.Sprintf("bst cannot resolve %s: %s", strings.Join(e.Elements, " "), e.Msg)
}

// marker starts each element's record in bst show's output; the fields
// are separated by it too. The element's variables follow as YAML: they
// carry project-name and element-name, which make its ref.
const marker = "@@bst-cache@@"

// showFormat is the --format bst show is given; weakKey is the field
// weakKeyShim adds.
const (
	showFormat = marker + "%{name}" + marker + "%{full-key}" + marker + "%{state}" + marker + "\n%{vars}"
	weakKey    = "%{weak-key}"
)

// weakKeyShim runs bst's own command line with one more field for bst
// show's --format, %{weak-key}: the element's weak cache key, which bst
// computes but does not print. Everything else (options, configuration,
// project loading, errors) is bst's. It runs with the Python interpreter
// bst itself runs with; sys.argv follows -c.
const weakKeyShim = `import sys
from buildstream._frontend import cli, widget
from buildstream.types import _KeyStrength
show = widget.LogLine.show_pipeline
def show_weak(self, elements, format_):
    return "\n".join(show(self, [e], format_.replace("` + weakKey + `", e._get_cache_key(strength=_KeyStrength.WEAK) or "?" * 64)) for e in elements)
widget.LogLine.show_pipeline = show_weak
sys.argv[0] = "bst"
sys.exit(cli())
`

// ShowOptions tune Show.
type ShowOptions struct {
	// Bst is the bst program to run. The default is "bst" on PATH.
	Bst string
	// Env is added to bst's environment. The default adds nothing.
	Env []string
	// WeakKeys also reads each element's weak key (Element.WeakKey), for
	// BuildStream's non-strict mode. bst cannot print it, so bst's command
	// line runs inside a small Python program that can (weakKeyShim),
	// with the interpreter bst's own script names. The default is false.
	WeakKeys bool
}

// Show runs `bst show` in the project at dir for elements with their
// dependencies as deps selects, and returns each element once, in bst's
// order, with the ref BuildStream stores its artifact under in strict
// mode. bst runs with --strict whatever its configuration says: in
// non-strict mode it prints, for an element it holds by its weak key, the
// strong key of the artifact it holds, not the one strict mode wants.
func Show(ctx context.Context, dir string, deps Deps, elements []string, o ShowOptions) ([]Element, error) {
	if o.Bst == "" {
		o.Bst = "bst"
	}
	path, err := exec.LookPath(o.Bst)
	if err != nil {
		return nil, ErrNoBst
	}
	format := showFormat
	var prefix []string
	if o.WeakKeys {
		format = marker + weakKey + showFormat
		py, err := interpreter(path)
		if err != nil {
			return nil, &ShowError{Elements: elements, Msg: fmt.Sprintf("reading the weak keys: %v", err)}
		}
		prefix, path = append(py[1:], "-c", weakKeyShim), py[0]
	}
	args := append(prefix, "--no-interactive", "--no-colors", "--strict", "--directory", dir, "show", "--deps", string(deps), "--format", format, "--")
	cmd := exec.CommandContext(ctx, path, append(args, elements...)...)
	cmd.Env = append(cmd.Environ(), o.Env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &ShowError{Elements: elements, Msg: bstReason(stderr.String(), err)}
	}
	return parseShow(stdout.String(), elements, o.WeakKeys)
}

// interpreter is the command line of the Python interpreter that runs the
// bst script at path, from its #! line ("#!/usr/bin/python3",
// "#!/usr/bin/env python3").
func interpreter(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	line, _ := bufio.NewReader(io.LimitReader(f, 4096)).ReadString('\n')
	fields := strings.Fields(strings.TrimPrefix(line, "#!"))
	if !strings.HasPrefix(line, "#!") || len(fields) == 0 {
		return nil, fmt.Errorf("%s is not a Python script (no #! line)", path)
	}
	if filepath.Base(fields[0]) == "env" {
		fields = fields[1:]
		if len(fields) > 0 && fields[0] == "-S" {
			fields = fields[1:]
		}
		if len(fields) == 0 {
			return nil, fmt.Errorf("%s: #!%s names no interpreter", path, strings.TrimSpace(line[2:]))
		}
		py, err := exec.LookPath(fields[0])
		if err != nil {
			return nil, fmt.Errorf("%s: its interpreter: %w", path, err)
		}
		fields[0] = py
	}
	// A wrapper (a shell script that runs bst in a container) cannot
	// run the shim: say so rather than let a shell read Python.
	if !strings.HasPrefix(filepath.Base(fields[0]), "python") {
		return nil, fmt.Errorf("%s runs with %s, not Python: non-strict mode needs bst's own script on PATH", path, fields[0])
	}
	return fields, nil
}

// logLine is a line of bst's log ("[00:00:00][][] FAILURE Loading
// elements").
var logLine = regexp.MustCompile(`^\[[^]]*\]\[[^]]*\]\[[^]]*\]`)

// bstReason is bst's own reason for failing: what it printed after its
// last log line ("Could not find element 'x.bst' in elements directory
// '…'"), on one line; err when it printed nothing else.
func bstReason(log string, err error) string {
	var lines []string
	for _, l := range strings.Split(log, "\n") {
		switch l = strings.TrimSpace(l); {
		case logLine.MatchString(l):
			lines = nil
		case l != "":
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return err.Error()
	}
	return strings.Join(lines, " ")
}

// parseShow reads the records showFormat makes, each led by the weak key
// when weak.
func parseShow(out string, asked []string, weak bool) ([]Element, error) {
	chunks := strings.Split("\n"+out, "\n"+marker)[1:]
	if len(chunks) == 0 {
		return nil, &ShowError{Elements: asked, Msg: "bst show printed no elements"}
	}
	var els []Element
	for _, c := range chunks {
		head, vars, _ := strings.Cut(c, "\n")
		f := strings.Split(head, marker)
		var weakKey string
		if weak && len(f) > 1 {
			weakKey, f = f[0], f[1:]
		}
		if len(f) < 3 {
			return nil, &ShowError{Elements: asked, Msg: fmt.Sprintf("unexpected bst show output %q", head)}
		}
		name, key, state := f[0], f[1], f[2]
		if state == "no reference" {
			return nil, &ShowError{Elements: []string{name}, Msg: "its sources have no reference (run bst track first)"}
		}
		if strings.Trim(key, "?") == "" || weak && strings.Trim(weakKey, "?") == "" {
			return nil, &ShowError{Elements: []string{name}, Msg: "bst cannot compute its cache key (inconsistent or untracked sources)"}
		}
		project, local, err := projectAndName(vars)
		if err != nil {
			return nil, &ShowError{Elements: []string{name}, Msg: err.Error()}
		}
		els = append(els, Element{Name: name, Project: project, Local: local, Key: key, WeakKey: weakKey})
	}
	return els, nil
}

// projectAndName reads project-name and element-name from an element's
// variables as bst show prints them.
func projectAndName(vars string) (project, element string, err error) {
	var v struct {
		Project string `yaml:"project-name"`
		Element string `yaml:"element-name"`
	}
	if err := yaml.Unmarshal([]byte(vars), &v); err != nil {
		return "", "", fmt.Errorf("reading its variables: %w", err)
	}
	if v.Project == "" || v.Element == "" {
		return "", "", errors.New("its variables name no project-name or element-name")
	}
	return v.Project, v.Element, nil
}
