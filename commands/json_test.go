package commands_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// doc is the envelope every command prints with --json.
type doc struct {
	Command  string
	Result   json.RawMessage
	Counts   map[string]int
	Warnings []string
	Error    string
	ExitCode int `json:"exit_code"`
}

// decodeDoc decodes a command's JSON document into v: its result, with
// the envelope's counts and warnings added when the result is an object.
func decodeDoc(s string, v any) error {
	var d doc
	if err := strictDoc(s, &d); err != nil {
		return err
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(d.Result, &obj) != nil || obj == nil {
		return json.Unmarshal(d.Result, v)
	}
	obj["counts"], _ = json.Marshal(d.Counts)
	obj["warnings"], _ = json.Marshal(d.Warnings)
	merged, _ := json.Marshal(obj)
	return json.Unmarshal(merged, v)
}

// strictDoc decodes exactly one document with every envelope key present.
func strictDoc(s string, d *doc) error {
	dec := json.NewDecoder(strings.NewReader(s))
	var keys map[string]json.RawMessage
	if err := dec.Decode(&keys); err != nil {
		return fmt.Errorf("not a JSON document: %w", err)
	}
	if dec.More() {
		return fmt.Errorf("more than one JSON document on stdout")
	}
	for _, k := range []string{"command", "result", "counts", "warnings", "exit_code"} {
		if _, ok := keys[k]; !ok {
			return fmt.Errorf("the document has no %q", k)
		}
	}
	if string(keys["warnings"]) == "null" || string(keys["counts"]) == "null" {
		return fmt.Errorf("warnings and counts must be a list and an object, not null")
	}
	return json.Unmarshal([]byte(s), d)
}

// Every command prints the same envelope with --json: the command, its
// result, counts with zeros included, warnings as a list, and when it
// fails the error and exit code; nothing else on stdout.
func TestJSONEnvelope(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	dst := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, srv)
	dead := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("dead", dead, false)+cacheTOML("src", srv.URL(), false)+cacheTOML("dst", dst.URL(), true))
	local := t.TempDir()
	out := filepath.Join(t.TempDir(), "checkout")
	base := []string{"--config", cfg, "--local", local, "--json"}
	for _, tc := range []struct {
		args    []string
		code    int
		counts  []string // keys that must be there, zero or not
		warning string   // a warning the document must carry
	}{
		{args: []string{"version"}, code: 0},
		{args: []string{"config"}, code: 0, counts: []string{"caches"}},
		{args: []string{"caches", "--offline"}, code: 0, counts: []string{"ok", "unreachable", "error", "unchecked"}},
		{args: []string{"pull", refs[0]}, code: 0, counts: []string{"done", "skipped", "missing", "failed"}, warning: dead},
		{args: []string{"pull", "demo/none/1", "--dry-run"}, code: 1, counts: []string{"done", "missing", "failed"}},
		{args: []string{"push", refs[0], "--dry-run"}, code: 0, counts: []string{"done", "skipped"}},
		{args: []string{"copy", "--from", "src", "--to", "dst", refs[1]}, code: 0, counts: []string{"done", "skipped"}},
		{args: []string{"which", "--cache", "src", refs[0]}, code: 0, counts: []string{"present", "missing", "failed"}},
		{args: []string{"ls"}, code: 0, counts: []string{"refs"}},
		{args: []string{"du"}, code: 0, counts: []string{"refs", "objects", "blobs_missing"}},
		{args: []string{"verify"}, code: 0, counts: []string{"refs", "objects", "problems", "unrepaired", "refs_removed"}},
		{args: []string{"checkout", refs[0], out}, code: 0, counts: []string{"files"}},
		{args: []string{"gc", "--dry-run"}, code: 0, counts: []string{"refs_removed", "objects_removed"}},
		{args: []string{"rm", "--dry-run", refs[0]}, code: 0, counts: []string{"done", "skipped"}},
		{args: []string{"pull"}, code: 2}, // no refs: a usage error still gets its document
	} {
		stdout, stderr, code := runCLI(t, "", append(base, tc.args...)...)
		var d doc
		if err := strictDoc(stdout, &d); err != nil {
			t.Errorf("%v: %v\n%s\n%s", tc.args, err, stdout, stderr)
			continue
		}
		if code != tc.code || d.ExitCode != code || d.Command != tc.args[0] {
			t.Errorf("%v: exit %d, document says command %q exit %d; want %d\n%s", tc.args, code, d.Command, d.ExitCode, tc.code, stdout)
		}
		if (code != 0) != (d.Error != "") {
			t.Errorf("%v: exit %d with error %q", tc.args, code, d.Error)
		}
		if code == 0 && string(d.Result) == "null" {
			t.Errorf("%v: no result", tc.args)
		}
		for _, k := range tc.counts {
			if _, ok := d.Counts[k]; !ok {
				t.Errorf("%v: counts %v lack %q", tc.args, d.Counts, k)
			}
		}
		if tc.warning != "" && !strings.Contains(strings.Join(d.Warnings, "\n"), tc.warning) {
			t.Errorf("%v: warnings %q do not mention %s", tc.args, d.Warnings, tc.warning)
		}
	}
}
