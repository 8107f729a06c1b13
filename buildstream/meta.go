package buildstream

import (
	"fmt"
	"sort"

	"gopkg.in/yaml.v3"

	bspb "github.com/bst-cache/bst-cache/protos/buildstream/v2"
)

// Paths of BuildStream 1's metadata inside an artifact's root Directory.
const (
	MetaDir          = "meta"
	KeysFile         = "keys.yaml"
	DependenciesFile = "dependencies.yaml"
)

// Keys are an artifact's strong and weak cache keys. BuildStream stores the
// artifact under both; non-strict builds look it up by the weak one.
type Keys struct {
	Strong string `yaml:"strong"`
	Weak   string `yaml:"weak"`
}

// All lists the keys once each, strong first.
func (k Keys) All() []string {
	if k.Weak == "" || k.Weak == k.Strong {
		return []string{k.Strong}
	}
	return []string{k.Strong, k.Weak}
}

// ParseKeys reads BuildStream 1's meta/keys.yaml.
func ParseKeys(data []byte) (Keys, error) {
	var k Keys
	if err := yaml.Unmarshal(data, &k); err != nil {
		return Keys{}, fmt.Errorf("%s/%s: %w", MetaDir, KeysFile, err)
	}
	if k.Strong == "" {
		return Keys{}, fmt.Errorf("%s/%s: no strong key", MetaDir, KeysFile)
	}
	return k, nil
}

// Dependency is one build dependency an artifact records. Project is empty
// where the record does not say (BuildStream 1).
type Dependency struct {
	Project, Element, Key string
}

// Ref is the dependency's ref; project stands in when the record has none.
func (d Dependency) Ref(project string) string {
	if d.Project != "" {
		project = d.Project
	}
	return ArtifactRef(project, d.Element, d.Key)
}

// ParseDependencies reads BuildStream 1's meta/dependencies.yaml: element
// name to strong key for every element in the artifact's build scope
// (build dependencies and what they need at run time, transitively). It
// does not record projects, so junctioned dependencies name elements of
// another project without saying which.
func ParseDependencies(data []byte) ([]Dependency, error) {
	m := map[string]string{}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", MetaDir, DependenciesFile, err)
	}
	out := make([]Dependency, 0, len(m))
	for el, key := range m {
		out = append(out, Dependency{Element: el, Key: key})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Element < out[j].Element })
	return out, nil
}

// ArtifactDependencies lists a BuildStream 2 Artifact's build_deps, which
// name their projects.
func ArtifactDependencies(a *bspb.Artifact) []Dependency {
	var out []Dependency
	for _, d := range a.GetBuildDeps() {
		out = append(out, Dependency{Project: d.GetProjectName(), Element: d.GetElementName(), Key: d.GetCacheKey()})
	}
	return out
}

// ArtifactKeys are a BuildStream 2 Artifact's strong and weak keys.
func ArtifactKeys(a *bspb.Artifact) Keys {
	return Keys{Strong: a.GetStrongKey(), Weak: a.GetWeakKey()}
}
