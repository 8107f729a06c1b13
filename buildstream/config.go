package buildstream

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/bst-cache/bst-cache/cache"
)

// FileError is a BuildStream file bst-cache cannot read, at a line.
type FileError struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e *FileError) Error() string {
	s := e.File
	if e.Line > 0 {
		s += ":" + strconv.Itoa(e.Line)
	}
	if e.Key != "" {
		s += ": " + e.Key
	}
	return s + ": " + e.Msg
}

// Remote is one cache as BuildStream's configuration declares it, with
// paths resolved as BuildStream resolves them.
type Remote struct {
	URL          string
	Push         bool
	InstanceName string
	// Type is "index", "storage" or "all" (BuildStream 2; "all" for 1).
	Type                                           string
	ServerCert, ClientKey, ClientCert, AccessToken string
	// Connection settings (BuildStream 2's connection-config), zero when
	// unset.
	RetryLimit     *int
	RetryDelay     time.Duration
	RequestTimeout time.Duration
	// File and Line are where the cache is declared.
	File string
	Line int
}

// Project is a BuildStream project: the directory holding project.conf.
type Project struct {
	Dir, File, Name string
	// Format is the kind of artifact the project's BuildStream makes:
	// cache.KindBst1Artifact or cache.KindBst2Artifact.
	Format cache.Kind
	root   *yaml.Node
}

// FindProject returns the nearest directory at or above dir that holds a
// project.conf, or "".
func FindProject(dir string) string {
	for {
		if st, err := os.Stat(filepath.Join(dir, "project.conf")); err == nil && !st.IsDir() {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// LoadProject reads dir/project.conf: the project's name, the BuildStream
// version it is for (min-version is BuildStream 2's; format-version, or
// neither, BuildStream 1's) and its recommended caches.
func LoadProject(dir string) (*Project, error) {
	p := &Project{Dir: dir, File: filepath.Join(dir, "project.conf"), Format: cache.KindBst1Artifact}
	root, err := readYAML(p.File)
	if err != nil {
		return nil, err
	}
	p.root = root
	name, line := scalar(root, "name")
	if name == "" {
		return nil, &FileError{File: p.File, Line: line, Key: "name", Msg: "the project has no name"}
	}
	p.Name = name
	if v, _ := scalar(root, "min-version"); v != "" {
		p.Format = cache.KindBst2Artifact
	}
	return p, nil
}

// UserConfig is BuildStream's user configuration file for a format (the
// kind of artifact its BuildStream makes); File is "" when there is none.
type UserConfig struct {
	File   string
	Format cache.Kind
	root   *yaml.Node
}

// major is the major version of the BuildStream of format f.
func major(f cache.Kind) int {
	if f == cache.KindBst1Artifact {
		return 1
	}
	return 2
}

// UserConfigName is the name of the user configuration file only the
// BuildStream of format f reads: buildstream1.conf or buildstream2.conf.
func UserConfigName(f cache.Kind) string {
	return fmt.Sprintf("buildstream%d.conf", major(f))
}

// UserConfigFile is the file the BuildStream of format f reads from
// configHome ($XDG_CONFIG_HOME): UserConfigName(f), else
// buildstream.conf; "" when neither exists.
func UserConfigFile(configHome string, f cache.Kind) string {
	for _, name := range []string{UserConfigName(f), "buildstream.conf"} {
		p := filepath.Join(configHome, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// LoadUserConfig reads a user configuration file for format f; an empty
// path is an empty configuration.
func LoadUserConfig(path string, f cache.Kind) (*UserConfig, error) {
	u := &UserConfig{File: path, Format: f}
	if path == "" {
		return u, nil
	}
	root, err := readYAML(path)
	if err != nil {
		return nil, err
	}
	u.root = root
	return u, nil
}

// CacheDir is where BuildStream keeps its local artifacts: BuildStream 1's
// artifactdir (default $XDG_CACHE_HOME/buildstream/artifacts), BuildStream
// 2's cachedir (default $XDG_CACHE_HOME/buildstream), with ~ and
// environment variables expanded as BuildStream does.
func (u *UserConfig) CacheDir(cacheHome string) string {
	key, def := "cachedir", filepath.Join(cacheHome, "buildstream")
	if u.Format == cache.KindBst1Artifact {
		key, def = "artifactdir", filepath.Join(cacheHome, "buildstream", "artifacts")
	}
	v, _ := scalar(u.root, key)
	if v == "" {
		return def
	}
	v = os.Expand(expandHome(v), func(name string) string {
		if name == "XDG_CACHE_HOME" {
			return cacheHome
		}
		return os.Getenv(name)
	})
	return filepath.Clean(v)
}

// Strict is whether BuildStream builds project in strict mode by this
// configuration: its projects.NAME.strict, true when unset (bst's
// --strict and --no-strict override it). A value bst would refuse is an
// error.
func (u *UserConfig) Strict(project *Project) (bool, error) {
	if project == nil {
		return true, nil
	}
	v, line := scalar(lookup(lookup(u.root, "projects"), project.Name), "strict")
	switch v {
	case "", "true", "True":
		return true, nil
	case "false", "False":
		return false, nil
	}
	return true, &FileError{File: u.File, Line: line, Key: "projects." + project.Name + ".strict", Msg: fmt.Sprintf("want true or false, not %q", v)}
}

// Caches lists the caches BuildStream uses for project (nil outside a
// project) in BuildStream's order, each once. section is "artifacts" or
// "source-caches" (BuildStream 2).
//
// BuildStream 1: the user file's projects.NAME.artifacts, then
// project.conf's, then the user file's artifacts.
//
// BuildStream 2: the user file's projects.NAME.<section>.servers if any,
// else its <section>.servers; then project.conf's <section>, unless either
// user section sets override-project-caches.
func Caches(u *UserConfig, project *Project, section string) ([]Remote, error) {
	var override *yaml.Node
	if project != nil {
		override = lookup(lookup(lookup(u.root, "projects"), project.Name), section)
	}
	global := lookup(u.root, section)
	var out []Remote
	add := func(node *yaml.Node, file, basedir string, f cache.Kind) error {
		rs, err := remotes(node, file, basedir, f)
		out = append(out, rs...)
		return err
	}
	if u.Format == cache.KindBst1Artifact {
		if project != nil {
			if err := add(override, u.File, "", cache.KindBst1Artifact); err != nil {
				return nil, err
			}
			if err := add(lookup(project.root, section), project.File, project.Dir, cache.KindBst1Artifact); err != nil {
				return nil, err
			}
		}
		if err := add(global, u.File, "", cache.KindBst1Artifact); err != nil {
			return nil, err
		}
		return dedupe(out), nil
	}
	for _, n := range []*yaml.Node{override, global} {
		if err := sectionKeys(n, u.File, section); err != nil {
			return nil, err
		}
	}
	skipProject := false
	for _, n := range []*yaml.Node{override, global} {
		if b, _ := scalar(n, "override-project-caches"); b == "true" {
			skipProject = true
		}
	}
	user := override
	if s := lookup(override, "servers"); s == nil || len(s.Content) == 0 {
		user = global
	}
	if err := add(lookup(user, "servers"), u.File, "", cache.KindBst2Artifact); err != nil {
		return nil, err
	}
	if project != nil && !skipProject {
		if err := add(lookup(project.root, section), project.File, project.Dir, cache.KindBst2Artifact); err != nil {
			return nil, err
		}
	}
	return dedupe(out), nil
}

// sectionKeys checks a BuildStream 2 user section: a mapping of
// override-project-caches and servers.
func sectionKeys(n *yaml.Node, file, section string) error {
	if n == nil {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return &FileError{File: file, Line: n.Line, Key: section, Msg: "BuildStream 2 wants a mapping with servers: (a list of caches)"}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Value != "servers" && k.Value != "override-project-caches" {
			return &FileError{File: file, Line: k.Line, Key: section + "." + k.Value, Msg: "not a key BuildStream 2 accepts here (it wants servers: and override-project-caches:; is this BuildStream 1's form?)"}
		}
	}
	return nil
}

// remotes reads a list of cache specs, or (BuildStream 1) a single one.
func remotes(node *yaml.Node, file, basedir string, f cache.Kind) ([]Remote, error) {
	if node == nil || node.Kind == yaml.ScalarNode && node.Tag == "!!null" {
		return nil, nil
	}
	items := []*yaml.Node{node}
	switch {
	case node.Kind == yaml.SequenceNode:
		items = node.Content
	case node.Kind != yaml.MappingNode || f == cache.KindBst2Artifact:
		return nil, &FileError{File: file, Line: node.Line, Msg: "want a list of cache mappings (url: ...)"}
	}
	var out []Remote
	for _, it := range items {
		r, err := remote(it, file, basedir, f)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// remote reads one cache spec, accepting the keys that version accepts.
func remote(n *yaml.Node, file, basedir string, f cache.Kind) (Remote, error) {
	r := Remote{File: file, Line: n.Line, Type: "all"}
	if n.Kind != yaml.MappingNode {
		return r, &FileError{File: file, Line: n.Line, Msg: "a cache must be a mapping with a url"}
	}
	bad := func(line int, key, format string, args ...any) error {
		return &FileError{File: file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	path := func(p string) string {
		if f == cache.KindBst2Artifact {
			p = expandHome(p)
		}
		if basedir != "" && !filepath.IsAbs(p) {
			p = filepath.Join(basedir, p)
		}
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		return p
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		switch key := k.Value; {
		case key == "url":
			r.URL = val.Value
		case key == "push":
			b, err := strconv.ParseBool(val.Value)
			if err != nil {
				return r, bad(val.Line, key, "want true or false, got %q", val.Value)
			}
			r.Push = b
		case f == cache.KindBst1Artifact && (key == "server-cert" || key == "client-key" || key == "client-cert"):
			setCert(&r, key, path(val.Value))
		case f == cache.KindBst2Artifact && key == "instance-name":
			r.InstanceName = val.Value
		case f == cache.KindBst2Artifact && key == "type":
			if val.Value != "index" && val.Value != "storage" && val.Value != "all" {
				return r, bad(val.Line, key, "want index, storage or all, got %q", val.Value)
			}
			r.Type = val.Value
		case f == cache.KindBst2Artifact && key == "auth":
			if err := auth(&r, val, bad, path); err != nil {
				return r, err
			}
		case f == cache.KindBst2Artifact && key == "connection-config":
			if err := connection(&r, val, bad); err != nil {
				return r, err
			}
		default:
			return r, bad(k.Line, key, "not a key BuildStream %d accepts in a cache", major(f))
		}
	}
	if r.URL == "" {
		return r, bad(n.Line, "url", "the cache has no url")
	}
	if (r.ClientKey == "") != (r.ClientCert == "") {
		return r, bad(n.Line, "client-key", "client-key and client-cert go together")
	}
	return r, nil
}

func setCert(r *Remote, key, p string) {
	switch key {
	case "server-cert":
		r.ServerCert = p
	case "client-key":
		r.ClientKey = p
	case "client-cert":
		r.ClientCert = p
	case "access-token":
		r.AccessToken = p
	}
}

type badFunc func(line int, key, format string, args ...any) error

// auth reads BuildStream 2's auth: mapping.
func auth(r *Remote, n *yaml.Node, bad badFunc, path func(string) string) error {
	if n.Kind != yaml.MappingNode {
		return bad(n.Line, "auth", "want a mapping")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "server-cert", "client-key", "client-cert", "access-token":
			setCert(r, k.Value, path(val.Value))
		case "access-token-reload-interval":
			// bst-cache reads the token once per run.
		default:
			return bad(k.Line, "auth."+k.Value, "not a key BuildStream 2 accepts in auth")
		}
	}
	return nil
}

// connection reads BuildStream 2's connection-config: retry-delay in
// milliseconds, request-timeout in seconds.
func connection(r *Remote, n *yaml.Node, bad badFunc) error {
	if n.Kind != yaml.MappingNode {
		return bad(n.Line, "connection-config", "want a mapping")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		num, err := strconv.Atoi(val.Value)
		if err != nil || num < 0 {
			return bad(val.Line, "connection-config."+k.Value, "want a whole number, got %q", val.Value)
		}
		switch k.Value {
		case "retry-limit":
			r.RetryLimit = &num
		case "retry-delay":
			r.RetryDelay = time.Duration(num) * time.Millisecond
		case "request-timeout":
			r.RequestTimeout = time.Duration(num) * time.Second
		case "keepalive-time":
		default:
			return bad(k.Line, "connection-config."+k.Value, "not a key BuildStream 2 accepts in connection-config")
		}
	}
	return nil
}

// dedupe keeps the first of caches BuildStream would take as the same.
func dedupe(rs []Remote) []Remote {
	seen := map[string]bool{}
	var out []Remote
	for _, r := range rs {
		k := strings.Join([]string{r.URL, r.InstanceName, r.Type, strconv.FormatBool(r.Push), r.ServerCert, r.ClientCert, r.ClientKey, r.AccessToken}, "\x00")
		if !seen[k] {
			seen[k] = true
			out = append(out, r)
		}
	}
	return out
}

// readYAML parses a file; errors name the file and line.
func readYAML(path string) (*yaml.Node, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, fs.ErrNotExist) {
			msg = "no such file"
		}
		return nil, &FileError{File: path, Msg: msg}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, yamlError(path, err)
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, &FileError{File: path, Line: root.Line, Msg: "want a mapping at the top level"}
	}
	return root, nil
}

// yamlError turns yaml.v3's "yaml: line N: msg" into a FileError.
func yamlError(path string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if l, err := strconv.Atoi(n); err == nil {
				line, msg = l, after
			}
		}
	}
	return &FileError{File: path, Line: line, Msg: msg}
}

// lookup finds key in a mapping node; nil when absent.
func lookup(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// scalar is a mapping's scalar value and its line.
func scalar(n *yaml.Node, key string) (string, int) {
	v := lookup(n, key)
	if v == nil || v.Kind != yaml.ScalarNode {
		return "", 0
	}
	return v.Value, v.Line
}

func expandHome(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		home, _ := os.UserHomeDir()
		return filepath.Join(home, p[1:])
	}
	return p
}

// InstalledFormat asks the bst on PATH for its major version: the kind
// of artifact it makes, cache.KindBst1Artifact or cache.KindBst2Artifact.
func InstalledFormat(ctx context.Context) (cache.Kind, error) {
	path, err := exec.LookPath("bst")
	if err != nil {
		return "", ErrNoBst
	}
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("bst --version: %w", err)
	}
	v := strings.TrimSpace(string(out))
	if i := strings.LastIndexByte(v, ' '); i >= 0 {
		v = v[i+1:]
	}
	switch {
	case strings.HasPrefix(v, "1."):
		return cache.KindBst1Artifact, nil
	case strings.HasPrefix(v, "2."):
		return cache.KindBst2Artifact, nil
	}
	return "", fmt.Errorf("bst --version printed %q: not BuildStream 1 or 2", v)
}
