package buildstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
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
	// Key is its strong cache key.
	Key string
}

// Ref is the element's artifact ref.
func (e Element) Ref() string { return ArtifactRef(e.Project, e.Local, e.Key) }

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

// showFormat is the --format bst show is given.
const showFormat = marker + "%{name}" + marker + "%{full-key}" + marker + "%{state}" + marker + "\n%{vars}"

// Show runs `bst show` in the project at dir for elements with their
// dependencies as deps selects, and returns each element once, in bst's
// order, with the ref BuildStream stores its artifact under. bst is the
// program to run ("bst" when empty); env is added to its environment.
func Show(ctx context.Context, bst, dir string, env []string, deps Deps, elements []string) ([]Element, error) {
	if bst == "" {
		bst = "bst"
	}
	path, err := exec.LookPath(bst)
	if err != nil {
		return nil, ErrNoBst
	}
	args := []string{"--no-interactive", "--no-colors", "--directory", dir, "show", "--deps", string(deps), "--format", showFormat, "--"}
	cmd := exec.CommandContext(ctx, path, append(args, elements...)...)
	cmd.Env = append(cmd.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &ShowError{Elements: elements, Msg: lastError(stderr.String(), err)}
	}
	return parseShow(stdout.String(), elements)
}

// lastError picks bst's own error lines from its log.
func lastError(log string, err error) string {
	var lines []string
	for _, l := range strings.Split(log, "\n") {
		l = strings.TrimSpace(l)
		if strings.Contains(l, "Error") || strings.Contains(l, "error:") || strings.Contains(l, "FAILURE") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return err.Error()
	}
	return strings.Join(lines, "; ")
}

// parseShow reads the records showFormat makes.
func parseShow(out string, asked []string) ([]Element, error) {
	chunks := strings.Split("\n"+out, "\n"+marker)[1:]
	if len(chunks) == 0 {
		return nil, &ShowError{Elements: asked, Msg: "bst show printed no elements"}
	}
	var els []Element
	for _, c := range chunks {
		head, vars, _ := strings.Cut(c, "\n")
		f := strings.Split(head, marker)
		if len(f) < 3 {
			return nil, &ShowError{Elements: asked, Msg: fmt.Sprintf("unexpected bst show output %q", head)}
		}
		name, key, state := f[0], f[1], f[2]
		if state == "no reference" {
			return nil, &ShowError{Elements: []string{name}, Msg: "its sources have no reference (run bst track first)"}
		}
		if strings.Trim(key, "?") == "" {
			return nil, &ShowError{Elements: []string{name}, Msg: "bst cannot compute its cache key (inconsistent or untracked sources)"}
		}
		project, local, err := projectAndName(vars)
		if err != nil {
			return nil, &ShowError{Elements: []string{name}, Msg: err.Error()}
		}
		els = append(els, Element{Name: name, Project: project, Local: local, Key: key})
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
