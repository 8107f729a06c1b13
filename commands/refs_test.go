package commands_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// Refs come from arguments, stdin ("-") and --refs-from, with comments and
// blank lines skipped and duplicates dropped; bad refs in a file name the
// line.
func TestRefsInput(t *testing.T) {
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true})
	_, _, refs := builtProject(t, srv)
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("s", srv.URL(), false))
	list := filepath.Join(t.TempDir(), "refs.txt")
	os.WriteFile(list, []byte("# promoted today\n\n"+refs[0]+"\n  "+refs[0]+"  \n"), 0o644)

	stdin, _ := os.CreateTemp(t.TempDir(), "stdin")
	stdin.WriteString(refs[1] + "\n" + refs[0] + "\n")
	stdin.Seek(0, 0)
	old := os.Stdin
	os.Stdin = stdin
	defer func() { os.Stdin = old }()

	local := t.TempDir()
	stdout, stderr, code := runCLI(t, "", "--config", cfg, "--local", local, "--json", "pull", "--refs-from", list, "-", refs[0])
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	var rep pullReport
	if err := decodeDoc(stdout, &rep); err != nil || len(rep.Refs) != 2 {
		t.Errorf("want the 2 distinct refs once each: %+v %v", rep.Refs, err)
	}

	os.WriteFile(list, []byte(refs[0]+"\n../escape\n"), 0o644)
	_, stderr, code = runCLI(t, "", "--config", cfg, "--local", local, "pull", "--refs-from", list)
	if code != 2 || !strings.Contains(stderr, list+":2") {
		t.Errorf("a bad ref in a file: exit %d; want 2 naming %s:2\n%s", code, list, stderr)
	}
	_, stderr, code = runCLI(t, "", "--config", cfg, "--local", local, "pull")
	if code != 2 || !strings.Contains(stderr, "no refs given") {
		t.Errorf("no refs: exit %d\n%s", code, stderr)
	}
}
