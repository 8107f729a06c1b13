package testenv

import (
	"os/exec"
	"strings"
	"testing"
)

var genrefs goBinary

// Genrefs writes BuildStream 1 artifacts into the store dir with
// scripts/genrefs (args are its flags, e.g. "-n", "40", "-files", "60"),
// each under its strong and its weak ref as bst stores one, and returns
// the strong refs.
func Genrefs(t testing.TB, dir string, args ...string) []string {
	t.Helper()
	bin := genrefs.get(t, "genrefs", "BST_CACHE_GENREFS", ".", "./scripts/genrefs")
	out, err := exec.Command(bin, append(args, dir)...).Output()
	if err != nil {
		t.Fatalf("genrefs %v: %v", args, err)
	}
	return strings.Fields(string(out))
}
