package cache

import "testing"

// Every kind's layout and format name, and the format names read back.
func TestKindLayoutAndFormat(t *testing.T) {
	for _, tc := range []struct {
		kind   Kind
		layout Kind
		format string
	}{
		{KindArtifact, KindArtifact, ""},
		{KindBst1Artifact, KindBst1Artifact, "bst1"},
		{KindBst2Artifact, KindBst2Artifact, "bst2"},
		{KindSource, KindBst2Artifact, "bst2"},
		{KindAsset, KindBst2Artifact, "bst2"},
	} {
		if got := tc.kind.Layout(); got != tc.layout {
			t.Errorf("%s: layout %s, want %s", tc.kind, got, tc.layout)
		}
		if got := tc.kind.Format(); got != tc.format {
			t.Errorf("%s: format %q, want %q", tc.kind, got, tc.format)
		}
		if tc.format == "" {
			continue
		}
		if got, err := ParseFormat(tc.format); err != nil || got != tc.layout {
			t.Errorf("ParseFormat(%q) = %s, %v; want %s", tc.format, got, err, tc.layout)
		}
	}
	for _, bad := range []string{"", "artifact", "bst1-artifact", "BST1", "bst3"} {
		if got, err := ParseFormat(bad); err == nil {
			t.Errorf("ParseFormat(%q) = %s, want an error", bad, got)
		}
	}
	if _, err := Open(t.TempDir(), ""); err == nil {
		t.Error("Open with no kind: want an error")
	}
}
