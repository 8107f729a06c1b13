package config

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
)

// bstFormat picks the format of the BuildStream whose files are read: the
// project's, else the format a bst-cache file set, else that of the user
// file that names its version (buildstream2.conf, buildstream1.conf), else
// (for a plain buildstream.conf, or one given with --config) the bst on
// PATH's, else BuildStream 2's.
func bstFormat(cfg *Config, project *buildstream.Project, configHome, userFile string, installed func() (cache.Kind, error)) cache.Kind {
	switch {
	case project != nil:
		return project.Format
	case cfg.Format != cache.KindArtifact:
		return cfg.Format
	}
	for _, f := range []cache.Kind{cache.KindBst2Artifact, cache.KindBst1Artifact} {
		if _, err := os.Stat(filepath.Join(configHome, buildstream.UserConfigName(f))); err == nil {
			return f
		}
	}
	_, err := os.Stat(filepath.Join(configHome, "buildstream.conf"))
	if err == nil || userFile != "" {
		if f, err := installed(); err == nil {
			return f
		}
	}
	return cache.KindBst2Artifact
}

// loadBuildStream adds what BuildStream's own configuration says: its
// caches (first, in BuildStream's order; a bst-cache cache with the same
// URL and instance name takes the BuildStream one's place and settings,
// keeping its certificates when it sets none), and inside a project the
// format it is for and BuildStream's local cache as the local store,
// unless a bst-cache file set them. userFile overrides the user file
// BuildStream would read.
func loadBuildStream(cfg *Config, wd, userFile string) error {
	configHome := xdgDir("XDG_CONFIG_HOME", ".config")
	var project *buildstream.Project
	if dir := buildstream.FindProject(wd); dir != "" {
		p, err := buildstream.LoadProject(dir)
		if err != nil {
			return fileError(err)
		}
		project = p
	}
	format := bstFormat(cfg, project, configHome, userFile, func() (cache.Kind, error) {
		return buildstream.InstalledFormat(context.Background())
	})
	if userFile == "" {
		userFile = buildstream.UserConfigFile(configHome, format)
	}
	u, err := buildstream.LoadUserConfig(userFile, format)
	if err != nil {
		return fileError(err)
	}
	artifacts, err := buildstream.Caches(u, project, "artifacts")
	if err != nil {
		return fileError(err)
	}
	var sources []buildstream.Remote
	if format == cache.KindBst2Artifact {
		if sources, err = buildstream.Caches(u, project, "source-caches"); err != nil {
			return fileError(err)
		}
	}
	own := cfg.Caches
	if cfg.Caches, err = merge(artifacts, own); err != nil {
		return err
	}
	if cfg.SourceCaches, err = merge(sources, own); err != nil {
		return err
	}
	if userFile != "" {
		cfg.Files = append(cfg.Files, userFile)
	}
	cfg.Project = project
	if project == nil {
		return nil
	}
	cfg.Files = append(cfg.Files, project.File)
	strict, err := u.Strict(project)
	if err != nil {
		return fileError(err)
	}
	cfg.NonStrict = !strict
	if cfg.Format == cache.KindArtifact {
		cfg.Format, cfg.FormatFrom = cache.KindBst2Artifact, project.File+" (min-version: BuildStream 2)"
		if format == cache.KindBst1Artifact {
			cfg.Format, cfg.FormatFrom = cache.KindBst1Artifact, project.File+" (no min-version: BuildStream 1)"
		}
	}
	if !cfg.LocalSet {
		cfg.Local = u.CacheDir(xdgDir("XDG_CACHE_HOME", ".cache"))
		cfg.LocalFrom = "BuildStream's local cache for the project in " + project.Dir
	}
	return nil
}

// merge puts BuildStream's caches first, each replaced by a bst-cache
// cache of the same URL and instance name, then the other bst-cache caches.
func merge(remotes []buildstream.Remote, own []Cache) ([]Cache, error) {
	used := make([]bool, len(own))
	taken := map[string]bool{}
	for _, c := range own {
		taken[c.Name] = true
	}
	var out []Cache
	for _, r := range remotes {
		c, err := fromRemote(r, taken)
		if err != nil {
			return nil, err
		}
		for i, o := range own {
			if !used[i] && sameURL(o.URL, r.URL) && o.InstanceName == r.InstanceName {
				used[i] = true
				if o.Auth == (Auth{}) {
					o.Auth = c.Auth
				}
				c = o
				break
			}
		}
		taken[c.Name] = true
		out = append(out, c)
	}
	for i, o := range own {
		if !used[i] {
			out = append(out, o)
		}
	}
	return out, checkUnique(out)
}

func sameURL(a, b string) bool {
	return strings.TrimSuffix(a, "/") == strings.TrimSuffix(b, "/")
}

// fromRemote turns a BuildStream cache into a bst-cache one with a name
// made from its URL.
func fromRemote(r buildstream.Remote, taken map[string]bool) (Cache, error) {
	v := validator{file: r.File, dir: filepath.Dir(r.File)}
	bad := func(key, format string, args ...any) error {
		return &Error{File: r.File, Line: r.Line, Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	ep, err := v.parseURL(r.URL)
	if err != nil {
		return Cache{}, bad("url", "%v", err)
	}
	c := Cache{
		Name: nameFor(r, taken), URL: r.URL, Endpoint: ep, InstanceName: r.InstanceName,
		Type: Type(r.Type), Push: r.Push, MaxConcurrency: DefaultMaxConcurrency,
		Compression: CompressionAuto, Origin: Origin{File: r.File, Line: r.Line},
		Connection: Connection{
			ConnectTimeout: DefaultConnectTimeout, RequestTimeout: DefaultRequestTimeout,
			RetryLimit: DefaultRetryLimit, RetryDelay: DefaultRetryDelay, StallTimeout: DefaultStallTimeout,
		},
		Auth: Auth{ServerCert: r.ServerCert, ClientCert: r.ClientCert, ClientKey: r.ClientKey, AccessTokenFile: r.AccessToken},
	}
	if r.RetryLimit != nil {
		c.Connection.RetryLimit = *r.RetryLimit
	}
	if r.RetryDelay > 0 {
		c.Connection.RetryDelay = r.RetryDelay
	}
	if r.RequestTimeout > 0 {
		c.Connection.RequestTimeout = r.RequestTimeout
	}
	for key, p := range map[string]string{"server-cert": c.Auth.ServerCert, "client-cert": c.Auth.ClientCert, "client-key": c.Auth.ClientKey, "access-token": c.Auth.AccessTokenFile} {
		if p == "" {
			continue
		}
		if key != "access-token" && !ep.TLS {
			return Cache{}, bad(key, "needs a TLS url (https://), not %q", r.URL)
		}
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			return Cache{}, bad(key, "file %s not found", p)
		}
	}
	return c, nil
}

// nameFor makes a readable, stable name from a cache's host, port and
// instance name: "cache.example.com-11001", "localhost-8080-main".
func nameFor(r buildstream.Remote, taken map[string]bool) string {
	base := r.URL
	if u, err := url.Parse(r.URL); err == nil && u.Host != "" {
		base = u.Hostname()
		if p := u.Port(); p != "" {
			base += "-" + p
		}
	}
	if r.InstanceName != "" {
		base += "-" + r.InstanceName
	}
	var b strings.Builder
	for _, ch := range strings.ToLower(base) {
		if ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '-' || ch == '_' {
			b.WriteRune(ch)
		} else {
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-._")
	if name == "" {
		name = "cache"
	}
	for i, n := 2, name; ; i++ {
		if !taken[n] {
			return n
		}
		n = fmt.Sprintf("%s-%d", name, i)
	}
}

// fileError turns a BuildStream file error into a configuration error.
func fileError(err error) error {
	var fe *buildstream.FileError
	if errors.As(err, &fe) {
		return &Error{File: fe.File, Line: fe.Line, Key: fe.Key, Msg: fe.Msg}
	}
	return fmt.Errorf("%w: %v", ErrInvalid, err)
}

func xdgDir(env, fallback string) string {
	if d := os.Getenv(env); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, fallback)
}
