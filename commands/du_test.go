package commands_test

import (
	"regexp"
	"strings"
	"testing"
)

// du separates its columns: size, blob count, ref.
func TestDuColumns(t *testing.T) {
	local := t.TempDir()
	small, big := "demo/a/"+strings.Repeat("1", 64), "big/e05/"+strings.Repeat("2", 64)
	bst1Artifact(t, local, small, 1, 10, 10)
	bst1ArtifactSeeded(t, local, big, 16, 1000, 14<<20, 2)
	stdout, stderr, code := runCLI(t, "", "--format", "bst1", "--local", local, "du")
	if code != 0 {
		t.Fatalf("du: exit %d\n%s", code, stderr)
	}
	for _, ref := range []string{small, big} {
		if !regexp.MustCompile(`(?m)^ *[0-9.]+[KMG]?i?B  +[0-9]+ blobs  ` + ref + `$`).MatchString(stdout) {
			t.Errorf("du's line for %s does not read SIZE  N blobs  REF:\n%s", ref, stdout)
		}
	}
}
