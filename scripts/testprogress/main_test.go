package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// On the stream of a real `go test -json` run (a module with a passing
// package, a failing one and one without tests), the text names each
// package as it starts, keeps go test's closing lines and a failing
// test's output, drops a passing test's, and ends with a summary.
func TestFormat(t *testing.T) {
	dir := testenv.WriteFiles(t, map[string]string{
		"go.mod":      "module example\n\ngo 1.21\n",
		"a/a_test.go": "package a\n\nimport \"testing\"\n\nfunc TestQuiet(t *testing.T) { t.Log(\"quiet detail\") }\n",
		"b/b_test.go": "package b\n\nimport \"testing\"\n\nfunc TestLoud(t *testing.T) { t.Error(\"loud failure\") }\n\nfunc TestFine(t *testing.T) {}\n",
		"c/c.go":      "package c\n",
	})
	cmd := exec.Command("go", "test", "-json", "-count=1", "./...")
	cmd.Dir = dir
	stream, err := cmd.Output()
	if _, failed := err.(*exec.ExitError); !failed {
		t.Fatalf("go test on a failing package: %v\n%s", err, stream)
	}
	var out bytes.Buffer
	if err := format(bytes.NewReader(stream), &out, time.Now); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{
		"running example/a", "running example/b",
		"ok  \texample/a\t", "FAIL\texample/b\t",
		"--- FAIL: TestLoud", "loud failure",
		"1 package ok, 1 failed", "FAIL example/b TestLoud\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("no %q in:\n%s", want, text)
		}
	}
	for _, not := range []string{"quiet detail", "TestFine", "{\""} {
		if strings.Contains(text, not) {
			t.Errorf("%q in:\n%s", not, text)
		}
	}
	if i, j := strings.Index(text, "running example/b"), strings.Index(text, "FAIL\texample/b"); i < 0 || j < i {
		t.Errorf("example/b's start is not announced before its result:\n%s", text)
	}
}
