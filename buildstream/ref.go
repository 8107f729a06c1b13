package buildstream

import (
	"fmt"
	"path"
	"strings"
)

// ArtifactRef is the ref BuildStream 1 and 2 store an artifact under:
// {project}/{normal name}/{key}, where the normal name is the element name
// with "/" turned into "-", the extension dropped, and every character but
// digits, ASCII letters, "-", "." and "_" turned into "_"
// (get_artifact_fullname in 1.6, _compose_artifact_name in 2.x).
func ArtifactRef(project, element, key string) string {
	return project + "/" + NormalName(element) + "/" + key
}

// NormalName is an element name as it appears in a ref.
func NormalName(element string) string {
	n := splitExt(strings.ReplaceAll(element, "/", "-"))
	var b strings.Builder
	for _, r := range n {
		switch {
		case r >= '0' && r <= '9', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '-', r == '.', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// splitExt drops the extension as Python's os.path.splitext does: leading
// dots do not start one.
func splitExt(name string) string {
	i := strings.LastIndexByte(name, '.')
	if i <= 0 || strings.Trim(name[:i], ".") == "" {
		return name
	}
	return name[:i]
}

// WithKey is ref with its cache key replaced: the same artifact's ref under
// its other key (strong or weak).
func WithKey(ref, key string) string {
	return path.Dir(ref) + "/" + key
}

// SplitRef splits a ref into its project, normal element name and key.
func SplitRef(ref string) (project, element, key string, err error) {
	parts := strings.Split(ref, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return "", "", "", fmt.Errorf("ref %q is not PROJECT/ELEMENT/KEY", ref)
	}
	return parts[0], parts[1], parts[2], nil
}

// IsElement says whether a command-line argument names an element (it ends
// in ".bst", junctioned as "junction.bst:element.bst" too) rather than a ref.
func IsElement(arg string) bool {
	return strings.HasSuffix(arg, ".bst")
}
