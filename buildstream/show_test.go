package buildstream

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// bst's reason for failing is what it printed after its log, not the log
// line saying that something failed.
func TestBstReason(t *testing.T) {
	for log, want := range map[string]string{
		"[--:--:--][][] START   Loading elements\n[00:00:00][][] FAILURE Loading elements\n\nCould not find element 'x.bst' in elements directory '/p/elements'\n": "Could not find element 'x.bst' in elements directory '/p/elements'",
		"[00:00:00][][] FAILURE Loading elements\n\nMalformed YAML:\n\nmapping values are not allowed here\n\n  in \"/p/elements/b.bst\", line 2, column 4\n\n":    "Malformed YAML: mapping values are not allowed here in \"/p/elements/b.bst\", line 2, column 4",
		"\nError loading project: project.conf not found in current directory or any of its parent directories\n":                                                  "Error loading project: project.conf not found in current directory or any of its parent directories",
		"[00:00:00][][] FAILURE Loading elements\n": "exit status 255",
	} {
		if got := bstReason(log, errors.New("exit status 255")); got != want {
			t.Errorf("bstReason(%q) = %q, want %q", log, got, want)
		}
	}
}

// With weak keys, each record leads with the element's weak key; an
// element without build dependencies has no weak ref of its own.
func TestParseShowWeak(t *testing.T) {
	out := marker + "w1" + marker + "base.bst" + marker + "k1" + marker + "cached" + marker + "\nproject-name: demo\nelement-name: base.bst\n" +
		marker + "w2" + marker + "lib.bst" + marker + "k2" + marker + "waiting" + marker + "\nproject-name: demo\nelement-name: lib.bst\n" +
		marker + "k3" + marker + "app.bst" + marker + "k3" + marker + "waiting" + marker + "\nproject-name: demo\nelement-name: app.bst\n"
	els, err := parseShow(out, []string{"lib.bst"}, true)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range els {
		got = append(got, e.Name+" "+e.Ref()+" "+e.WeakRef())
	}
	if diff := cmp.Diff([]string{"base.bst demo/base/k1 demo/base/w1", "lib.bst demo/lib/k2 demo/lib/w2", "app.bst demo/app/k3 "}, got); diff != "" {
		t.Errorf("elements (-want +got):\n%s", diff)
	}
	bad := marker + strings.Repeat("?", 64) + marker + "a.bst" + marker + "k" + marker + "waiting" + marker + "\nproject-name: d\nelement-name: a.bst\n"
	if _, err := parseShow(bad, []string{"a.bst"}, true); err == nil || !strings.Contains(err.Error(), "cannot compute its cache key") {
		t.Errorf("an unknown weak key: %v", err)
	}
}

// The interpreter comes from bst's #! line, direct or through env; a bst
// that is not a Python script (a shell wrapper) is an error, not a shell
// given Python to run.
func TestInterpreter(t *testing.T) {
	dir := t.TempDir()
	for line, want := range map[string]string{
		"#!/usr/bin/python3 -I\n":  "/usr/bin/python3 -I",
		"#!/usr/bin/env python3\n": "python3",
		"#!/usr/bin/env sh\n":      "error",
		"#!/bin/sh\n":              "error",
		"not a script\n":           "error",
	} {
		p := filepath.Join(dir, "bst")
		if err := os.WriteFile(p, []byte(line+"import sys\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		py, err := interpreter(p)
		got := strings.Join(py, " ")
		if err != nil {
			got = "error"
		} else if want == "python3" {
			got = filepath.Base(py[0]) // LookPath made it absolute
		}
		if got != want {
			t.Errorf("%q: %q (%v), want %q", line, got, err, want)
		}
	}
}
