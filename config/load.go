package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/words"
)

// ProjectFileName is the project file looked up in the working directory and
// its parents.
const ProjectFileName = "bst-cache.toml"

// Error is a configuration error at a place in a file.
type Error struct {
	File string
	Line int // 0 when the error is about the file as a whole
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		b.WriteString(": ")
		b.WriteString(e.Key)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap lets errors.Is(err, ErrInvalid) match.
func (e *Error) Unwrap() error { return ErrInvalid }

// Options says which files Load reads.
type Options struct {
	// File, when set, is the only file read (--config or BST_CACHE_CONFIG).
	File string
	// UserFile is the user file; DefaultUserFile() when empty. A missing
	// user file is not an error.
	UserFile string
	// WorkDir is where the project file search starts; the process's working
	// directory when empty.
	WorkDir string
}

// DefaultUserFile returns $XDG_CONFIG_HOME/bst-cache/config.toml, with
// XDG_CONFIG_HOME defaulting to ~/.config.
func DefaultUserFile() string {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "bst-cache", "config.toml")
}

// DefaultLocal returns $XDG_CACHE_HOME/bst-cache, with XDG_CACHE_HOME
// defaulting to ~/.cache.
func DefaultLocal() string {
	dir := os.Getenv("XDG_CACHE_HOME")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache")
	}
	return filepath.Join(dir, "bst-cache")
}

// FindProjectFile returns the nearest bst-cache.toml in dir or a parent, or "".
func FindProjectFile(dir string) string {
	for {
		p := filepath.Join(dir, ProjectFileName)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// Load reads and validates the configuration.
func Load(opts Options) (*Config, error) {
	cfg := &Config{Format: cache.KindArtifact, Local: DefaultLocal(), Jobs: DefaultJobs, FormatFrom: "(default)", LocalFrom: "(default)"}
	wd := opts.WorkDir
	if wd == "" {
		var err error
		if wd, err = os.Getwd(); err != nil {
			return nil, fmt.Errorf("finding the project file: %w", err)
		}
	}
	if opts.File != "" && IsBuildStreamFile(opts.File) {
		abs, err := filepath.Abs(opts.File)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, &Error{File: abs, Msg: "no such file"}
		}
		return cfg, loadBuildStream(cfg, wd, abs)
	}
	if opts.File != "" {
		f, err := readFile(opts.File, true)
		if err != nil {
			return nil, err
		}
		f.apply(cfg)
		cfg.Caches = f.caches
		cfg.SourceCaches = f.caches
		cfg.Files = []string{f.path}
		return cfg, checkUnique(cfg.Caches)
	}

	userPath := opts.UserFile
	if userPath == "" {
		userPath = DefaultUserFile()
	}
	var user, project *file
	if _, err := os.Stat(userPath); err == nil {
		if user, err = readFile(userPath, true); err != nil {
			return nil, err
		}
	}
	if p := FindProjectFile(wd); p != "" {
		var err error
		if project, err = readFile(p, false); err != nil {
			return nil, err
		}
	}

	// Scalars: the project sets defaults for its users, the user file wins.
	for _, f := range []*file{project, user} {
		if f != nil {
			f.apply(cfg)
		}
	}
	if user != nil {
		cfg.Files = append(cfg.Files, user.path)
		cfg.Caches = append(cfg.Caches, user.caches...)
	}
	if project != nil {
		cfg.Files = append(cfg.Files, project.path)
		if user == nil || !user.overrideProject {
			cfg.Caches = append(cfg.Caches, project.caches...)
		}
	}
	if err := checkUnique(cfg.Caches); err != nil {
		return nil, err
	}
	cfg.SourceCaches = cfg.Caches
	return cfg, loadBuildStream(cfg, wd, "")
}

// IsBuildStreamFile says whether a --config file is BuildStream's YAML
// (.conf, .yaml, .yml) rather than bst-cache's TOML.
func IsBuildStreamFile(path string) bool {
	switch filepath.Ext(path) {
	case ".conf", ".yaml", ".yml":
		return true
	}
	return false
}

func checkUnique(caches []Cache) error {
	seen := map[string]Origin{}
	for _, c := range caches {
		if first, dup := seen[c.Name]; dup {
			return &Error{File: c.Origin.File, Line: c.Origin.Line, Key: "cache.name",
				Msg: fmt.Sprintf("duplicate cache name %q (first declared at %s)", c.Name, first)}
		}
		seen[c.Name] = c.Origin
	}
	return nil
}

// file is one decoded and validated file.
type file struct {
	path            string
	format          *cache.Kind
	local           *string
	jobs            *int
	localMaxSize    *int64
	overrideProject bool
	caches          []Cache
}

func (f *file) apply(cfg *Config) {
	if f.format != nil {
		cfg.Format, cfg.FormatFrom = *f.format, f.path
	}
	if f.local != nil {
		cfg.Local, cfg.LocalSet, cfg.LocalFrom = *f.local, true, f.path
	}
	if f.jobs != nil {
		cfg.Jobs = *f.jobs
	}
	if f.localMaxSize != nil {
		cfg.LocalMaxSize = *f.localMaxSize
	}
}

type rawFile struct {
	Format                *string    `toml:"format"`
	Local                 *string    `toml:"local"`
	Jobs                  *int       `toml:"jobs"`
	LocalMaxSize          *string    `toml:"local-max-size"`
	OverrideProjectCaches *bool      `toml:"override-project-caches"`
	Cache                 []rawCache `toml:"cache"`
}

type rawCache struct {
	Name           string  `toml:"name"`
	URL            string  `toml:"url"`
	InstanceName   string  `toml:"instance-name"`
	Type           *string `toml:"type"`
	Push           bool    `toml:"push"`
	MaxConcurrency *int    `toml:"max-concurrency"`
	Bandwidth      *string `toml:"bandwidth"`
	Compression    *string `toml:"compression"`
	Auth           struct {
		ServerCert  string `toml:"server-cert"`
		ClientCert  string `toml:"client-cert"`
		ClientKey   string `toml:"client-key"`
		AccessToken string `toml:"access-token"`
		// CredentialHelper is a program speaking Bazel's credential
		// helper protocol.
		CredentialHelper string `toml:"credential-helper"`
	} `toml:"auth"`
	Connection struct {
		ConnectTimeout *string `toml:"connect-timeout"`
		RequestTimeout *string `toml:"request-timeout"`
		RetryLimit     *int    `toml:"retry-limit"`
		RetryDelay     *string `toml:"retry-delay"`
		StallTimeout   *string `toml:"stall-timeout"`
	} `toml:"connection"`
}

var typeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// readFile decodes and validates one file. isUser allows the user-only keys.
func readFile(path string, isUser bool) (*file, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &Error{File: path, Msg: err.Error()}
	}
	data, err := os.ReadFile(abs)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, fs.ErrNotExist) {
			msg = "no such file"
		}
		return nil, &Error{File: abs, Msg: msg}
	}
	var raw rawFile
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &Error{File: abs, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
		}
		// Type mismatches come as plain errors: "toml: line N (last key "K"): msg".
		if m := typeErrRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, &Error{File: abs, Line: line, Key: m[2], Msg: typeWords(m[2], m[3], valueAt(data, line))}
		}
		return nil, &Error{File: abs, Msg: err.Error()}
	}
	lines := locateKeys(data)
	v := validator{file: abs, dir: filepath.Dir(abs), lines: lines}

	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		return nil, v.unknownKey(undecoded)
	}

	f := &file{path: abs}
	if raw.LocalMaxSize != nil {
		n, err := ParseSize(*raw.LocalMaxSize)
		if err != nil || n <= 0 {
			return nil, v.errorf("local-max-size", "local-max-size", "want a size like \"20G\" or \"500MiB\", got %q", *raw.LocalMaxSize)
		}
		f.localMaxSize = &n
	}
	if raw.Format != nil {
		fm, err := cache.ParseFormat(*raw.Format)
		if err != nil {
			return nil, v.errorf("format", "format", "%q is not a format: want \"bst1\" or \"bst2\"", *raw.Format)
		}
		f.format = &fm
	}
	if raw.Local != nil {
		if *raw.Local == "" {
			return nil, v.errorf("local", "local", "must not be empty")
		}
		l := v.path(*raw.Local)
		f.local = &l
	}
	if raw.Jobs != nil {
		if *raw.Jobs < 1 || *raw.Jobs > 1024 {
			return nil, v.errorf("jobs", "jobs", "must be between 1 and 1024, not %d", *raw.Jobs)
		}
		f.jobs = raw.Jobs
	}
	if raw.OverrideProjectCaches != nil {
		if !isUser {
			return nil, v.errorf("override-project-caches", "override-project-caches", "is only allowed in the user file, not in a project file")
		}
		f.overrideProject = *raw.OverrideProjectCaches
	}
	for i, rc := range raw.Cache {
		c, err := v.cache(i, rc)
		if err != nil {
			return nil, err
		}
		f.caches = append(f.caches, c)
	}
	return f, nil
}

type validator struct {
	file  string
	dir   string
	lines map[string]int
}

// line returns the line of a located key path, falling back to its parents.
func (v *validator) line(path string) int {
	for {
		if l, ok := v.lines[path]; ok {
			return l
		}
		i := strings.LastIndexByte(path, '.')
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
}

func (v *validator) errorf(path, key, format string, args ...any) error {
	return &Error{File: v.file, Line: v.line(path), Key: key, Msg: fmt.Sprintf(format, args...)}
}

func (v *validator) unknownKey(keys []toml.Key) error {
	// Report the unknown key that comes first in the file.
	best, bestLine := keys[0].String(), 0
	for _, k := range keys {
		want := k.String()
		for p, l := range v.lines {
			if stripIndices(p) == want && (bestLine == 0 || l < bestLine) {
				best, bestLine = want, l
			}
		}
	}
	msg := "unknown key"
	parent, name := "", best
	if i := strings.LastIndexByte(best, '.'); i >= 0 {
		parent, name = best[:i], best[i+1:]
	}
	if near := words.Closest(name, keysUnder(reflect.TypeOf(rawFile{}), parent)); near != "" {
		msg += ": did you mean " + near + "?"
	}
	return &Error{File: v.file, Line: bestLine, Key: best, Msg: msg}
}

// keysUnder lists the keys a table of type t takes at the dotted path
// (arrays of tables are walked into).
func keysUnder(t reflect.Type, path string) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	first, rest, deeper := strings.Cut(path, ".")
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		switch {
		case path == "":
			keys = append(keys, tag)
		case tag == first && deeper:
			return keysUnder(f.Type, rest)
		case tag == first:
			return keysUnder(f.Type, "")
		}
	}
	return keys
}

// path expands ~ and makes a path absolute relative to the file's directory.
func (v *validator) path(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		home, _ := os.UserHomeDir()
		p = filepath.Join(home, p[1:])
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(v.dir, p)
	}
	return filepath.Clean(p)
}

func (v *validator) cache(i int, rc rawCache) (Cache, error) {
	at := "cache." + strconv.Itoa(i)
	key := func(k string) string { return at + "." + k }
	c := Cache{
		Name:           rc.Name,
		URL:            rc.URL,
		InstanceName:   rc.InstanceName,
		Type:           TypeAll,
		Push:           rc.Push,
		MaxConcurrency: DefaultMaxConcurrency,
		Compression:    CompressionAuto,
		Origin:         Origin{File: v.file, Line: v.line(at)},
		Connection: Connection{
			ConnectTimeout: DefaultConnectTimeout,
			RequestTimeout: DefaultRequestTimeout,
			RetryLimit:     DefaultRetryLimit,
			RetryDelay:     DefaultRetryDelay,
			StallTimeout:   DefaultStallTimeout,
		},
	}
	switch {
	case rc.Name == "":
		return c, v.errorf(key("name"), "cache.name", "missing: every [[cache]] needs a name")
	case !nameRE.MatchString(rc.Name):
		return c, v.errorf(key("name"), "cache.name", "%q is not a valid name: use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit", rc.Name)
	}
	named := func(k string) string { return fmt.Sprintf("cache %q: %s", rc.Name, k) }
	if rc.URL == "" {
		return c, v.errorf(key("url"), named("url"), "missing")
	}
	ep, err := v.parseURL(rc.URL)
	if err != nil {
		return c, v.errorf(key("url"), named("url"), "%v", err)
	}
	c.Endpoint = ep
	if rc.Type != nil {
		switch t := Type(*rc.Type); t {
		case TypeIndex, TypeStorage, TypeAll:
			c.Type = t
		default:
			return c, v.errorf(key("type"), named("type"), "%q is not a cache type: want \"index\", \"storage\" or \"all\"", *rc.Type)
		}
	}
	if rc.MaxConcurrency != nil {
		if *rc.MaxConcurrency < 1 || *rc.MaxConcurrency > 10000 {
			return c, v.errorf(key("max-concurrency"), named("max-concurrency"), "must be between 1 and 10000, not %d", *rc.MaxConcurrency)
		}
		c.MaxConcurrency = *rc.MaxConcurrency
	}
	if rc.Bandwidth != nil {
		n, err := ParseRate(*rc.Bandwidth)
		if err != nil {
			return c, v.errorf(key("bandwidth"), named("bandwidth"), "want a rate like \"10MiB/s\" or \"100Mbit\", got %q", *rc.Bandwidth)
		}
		c.Bandwidth = n
	}
	if rc.Compression != nil {
		switch m := Compression(*rc.Compression); m {
		case CompressionAuto, CompressionOff:
			c.Compression = m
		default:
			return c, v.errorf(key("compression"), named("compression"), "%q: want \"auto\" or \"off\"", *rc.Compression)
		}
	}

	durations := []struct {
		name string
		raw  *string
		dst  *time.Duration
	}{
		{"connect-timeout", rc.Connection.ConnectTimeout, &c.Connection.ConnectTimeout},
		{"request-timeout", rc.Connection.RequestTimeout, &c.Connection.RequestTimeout},
		{"retry-delay", rc.Connection.RetryDelay, &c.Connection.RetryDelay},
		{"stall-timeout", rc.Connection.StallTimeout, &c.Connection.StallTimeout},
	}
	for _, d := range durations {
		if d.raw == nil {
			continue
		}
		k := "connection." + d.name
		parsed, err := time.ParseDuration(*d.raw)
		if err != nil || parsed <= 0 {
			return c, v.errorf(key(k), named(k), "%q is not a positive duration (examples: \"500ms\", \"10s\", \"5m\")", *d.raw)
		}
		*d.dst = parsed
	}
	if rl := rc.Connection.RetryLimit; rl != nil {
		if *rl < 0 || *rl > 100 {
			return c, v.errorf(key("connection.retry-limit"), named("connection.retry-limit"), "must be between 0 and 100, not %d", *rl)
		}
		c.Connection.RetryLimit = *rl
	}

	a := rc.Auth
	files := []struct {
		name string
		raw  string
		dst  *string
		tls  bool
	}{
		{"server-cert", a.ServerCert, &c.Auth.ServerCert, true},
		{"client-cert", a.ClientCert, &c.Auth.ClientCert, true},
		{"client-key", a.ClientKey, &c.Auth.ClientKey, true},
		{"access-token", a.AccessToken, &c.Auth.AccessTokenFile, false},
		{"credential-helper", a.CredentialHelper, &c.Auth.CredentialHelper, false},
	}
	if a.AccessToken != "" && a.CredentialHelper != "" {
		return c, v.errorf(key("auth.credential-helper"), named("auth.credential-helper"), "give access-token or credential-helper, not both")
	}
	for _, f := range files {
		if f.raw == "" {
			continue
		}
		k := "auth." + f.name
		if f.tls && !ep.TLS {
			return c, v.errorf(key(k), named(k), "needs a TLS url (https:// or grpcs://), not %q", rc.URL)
		}
		p := v.path(f.raw)
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() {
			if f.name == "access-token" {
				// Never echo the value: it may be a token pasted in by mistake.
				return c, v.errorf(key(k), named(k), "token file not found (the value must be the path of a file holding the token)")
			}
			return c, v.errorf(key(k), named(k), "file %s not found", p)
		}
		if f.name == "credential-helper" && st.Mode().Perm()&0o111 == 0 {
			return c, v.errorf(key(k), named(k), "%s is not executable (chmod +x it)", p)
		}
		*f.dst = p
	}
	if (a.ClientCert == "") != (a.ClientKey == "") {
		if a.ClientCert != "" {
			return c, v.errorf(key("auth.client-cert"), named("auth.client-key"), "missing: client-cert is set, so client-key must be too")
		}
		return c, v.errorf(key("auth.client-key"), named("auth.client-cert"), "missing: client-key is set, so client-cert must be too")
	}
	return c, nil
}

// parseURL turns a cache URL into a dial target.
func (v *validator) parseURL(raw string) (Endpoint, error) {
	if shown := RedactURL(raw); shown != raw {
		return Endpoint{}, fmt.Errorf("%q: a cache URL carries no user or password (use [cache.auth] access-token, or a client certificate)", shown)
	}
	if rest, ok := strings.CutPrefix(raw, "unix:"); ok {
		rest = strings.TrimPrefix(rest, "//")
		if rest == "" {
			return Endpoint{}, fmt.Errorf("%q has no socket path", raw)
		}
		return Endpoint{Target: "unix://" + v.path(rest)}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Endpoint{}, fmt.Errorf("%q is not a URL", raw)
	}
	var tls bool
	var port string
	switch u.Scheme {
	case "http", "grpc":
		port = "80"
	case "https", "grpcs":
		tls, port = true, "443"
	case "":
		return Endpoint{}, fmt.Errorf("%q has no scheme: use http://, grpc://, https://, grpcs:// or unix:PATH", raw)
	default:
		return Endpoint{}, fmt.Errorf("unknown scheme %q in %q: use http:// or grpc:// (plaintext), https:// or grpcs:// (TLS), or unix:PATH", u.Scheme, raw)
	}
	if u.Hostname() == "" {
		return Endpoint{}, fmt.Errorf("%q has no host", raw)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		return Endpoint{}, fmt.Errorf("%q: a cache URL is scheme://host[:port] only (set instance-name for an instance)", raw)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return Endpoint{}, fmt.Errorf("%q: port %q is out of range", raw, p)
		}
		port = p
	}
	return Endpoint{Target: net.JoinHostPort(u.Hostname(), port), TLS: tls, ServerName: u.Hostname()}, nil
}

var indexRE = regexp.MustCompile(`\.[0-9]+`)

func stripIndices(p string) string { return indexRE.ReplaceAllString(p, "") }

// locateKeys maps each key path in a TOML document to its 1-based line.
// Elements of arrays of tables get their index ("cache.1.auth.client-key");
// a table header maps its own path. It reads the common forms (headers,
// key = value, dotted keys); anything fancier falls back to the nearest
// enclosing table's line, which is still the right neighbourhood.
func locateKeys(data []byte) map[string]int {
	lines := map[string]int{}
	arrays := map[string]int{} // array-of-tables path -> last index
	table := ""
	inMultiline := ""
	for n, line := range strings.Split(string(data), "\n") {
		lineNo := n + 1
		s := strings.TrimSpace(line)
		if inMultiline != "" {
			if strings.Count(s, inMultiline)%2 == 1 {
				inMultiline = ""
			}
			continue
		}
		switch {
		case s == "" || s[0] == '#':
			continue
		case strings.HasPrefix(s, "[["):
			end := strings.Index(s, "]]")
			if end < 0 {
				continue
			}
			name := resolveArrays(normalizeKey(s[2:end]), arrays)
			idx, seen := arrays[name]
			if seen {
				idx++
			}
			arrays[name] = idx
			table = name + "." + strconv.Itoa(idx)
			lines[table] = lineNo
		case s[0] == '[':
			end := strings.IndexByte(s, ']')
			if end < 0 {
				continue
			}
			table = resolveArrays(normalizeKey(s[1:end]), arrays)
			if _, ok := lines[table]; !ok {
				lines[table] = lineNo
			}
		default:
			eq := strings.IndexByte(s, '=')
			if eq < 0 {
				continue
			}
			k := normalizeKey(s[:eq])
			if k == "" {
				continue
			}
			full := k
			if table != "" {
				full = table + "." + k
			}
			if _, ok := lines[full]; !ok {
				lines[full] = lineNo
			}
			val := strings.TrimSpace(s[eq+1:])
			for _, q := range []string{`"""`, `'''`} {
				if strings.HasPrefix(val, q) && strings.Count(val, q)%2 == 1 {
					inMultiline = q
				}
			}
		}
	}
	return lines
}

// resolveArrays rewrites "cache.auth" to "cache.3.auth" when cache is an
// array of tables whose current element is 3.
func resolveArrays(path string, arrays map[string]int) string {
	parts := strings.Split(path, ".")
	var out []string
	for i, p := range parts {
		out = append(out, p)
		prefix := strings.Join(out, ".")
		if idx, ok := arrays[prefix]; ok && i < len(parts)-1 {
			out = append(out, strconv.Itoa(idx))
		}
	}
	return strings.Join(out, ".")
}

// normalizeKey trims white space and quotes around each dotted part.
func normalizeKey(k string) string {
	parts := strings.Split(strings.TrimSpace(k), ".")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if len(p) >= 2 && (p[0] == '"' || p[0] == '\'') && p[len(p)-1] == p[0] {
			p = p[1 : len(p)-1]
		}
		parts[i] = p
	}
	return strings.Join(parts, ".")
}

// userinfoRE finds the user[:password]@ part of a URL, parsed or not.
var userinfoRE = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@`)

// RedactURL hides a URL's user and password: "https://***@host". Secrets
// never reach output.
func RedactURL(raw string) string {
	return userinfoRE.ReplaceAllString(raw, "${1}***@")
}

// typeWords says a value's type is wrong in the configuration's words
// ("want a duration like \"10s\", got 10"), not Go's.
func typeWords(key, msg, got string) string {
	if !strings.Contains(msg, "incompatible types") {
		return msg
	}
	want := "a quoted string"
	switch last := key[strings.LastIndex(key, ".")+1:]; last {
	case "connect-timeout", "request-timeout", "retry-delay", "stall-timeout":
		want = `a duration like "10s"`
	case "jobs", "retry-limit", "max-concurrency":
		want = "a whole number"
	case "push", "override-project-caches":
		want = "true or false"
	case "local-max-size":
		want = `a size like "20G"`
	case "compression":
		want = `"auto" or "off"`
	case "bandwidth":
		want = `a rate like "10MiB/s" or "100Mbit"`
	}
	if got == "" {
		return "want " + want
	}
	return fmt.Sprintf("want %s, got %s", want, got)
}

// valueAt is the value written on a 1-based line of a TOML file ("10" in
// "connect-timeout = 10").
func valueAt(data []byte, line int) string {
	lines := strings.Split(string(data), "\n")
	if line < 1 || line > len(lines) {
		return ""
	}
	_, v, ok := strings.Cut(lines[line-1], "=")
	if !ok {
		return ""
	}
	v, _, _ = strings.Cut(v, " #")
	return strings.TrimSpace(v)
}
