package words

import "testing"

func TestPlural(t *testing.T) {
	for n, want := range map[int]string{0: "0 refs", 1: "1 ref", 2: "2 refs"} {
		if got := Plural(n, "ref"); got != want {
			t.Errorf("Plural(%d) = %q, want %q", n, got, want)
		}
	}
	if got := Plural(2, "miss"); got != "2 misses" {
		t.Errorf("Plural(2, miss) = %q, want 2 misses", got)
	}
}

func TestClosest(t *testing.T) {
	names := []string{"dry-run", "deps", "retry-limit"}
	for s, want := range map[string]string{"dryrun": "dry-run", "dep": "deps", "retry-limt": "retry-limit", "frobnicate": ""} {
		if got := Closest(s, names); got != want {
			t.Errorf("Closest(%q) = %q, want %q", s, got, want)
		}
	}
}
