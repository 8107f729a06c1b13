package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

func TestLoadFullExample(t *testing.T) {
	dir := testenv.WriteFiles(t, map[string]string{
		"ca.pem": "x", "client.crt": "x", "client.key": "x", "token.txt": "s3cret\n",
		"c.toml": `format = "bst1"
local = "store"
jobs = 3

[[cache]]
name = "latest"
url = "https://cache.example.com:11001"
instance-name = "main"
type = "index"
push = true
max-concurrency = 4
compression = "off"

[cache.auth]
server-cert = "ca.pem"
client-cert = "client.crt"
client-key = "client.key"
access-token = "token.txt"

[cache.connection]
connect-timeout = "3s"
request-timeout = "1m"
retry-limit = 2
retry-delay = "250ms"

[[cache]]
name = "releases"
url = "grpc://10.0.0.1"
`,
	})
	cfg, err := Load(Options{File: filepath.Join(dir, "c.toml")})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "c.toml")
	want := &Config{
		Format: cache.KindBst1Artifact, FormatFrom: file,
		Local: filepath.Join(dir, "store"), LocalSet: true, LocalFrom: file,
		Jobs:  3,
		Files: []string{file},
		Caches: []Cache{
			{
				Name: "latest", URL: "https://cache.example.com:11001",
				Endpoint:     Endpoint{Target: "cache.example.com:11001", TLS: true, ServerName: "cache.example.com"},
				InstanceName: "main", Type: TypeIndex, Push: true, MaxConcurrency: 4, Compression: CompressionOff,
				Auth: Auth{
					ServerCert: filepath.Join(dir, "ca.pem"), ClientCert: filepath.Join(dir, "client.crt"),
					ClientKey: filepath.Join(dir, "client.key"), AccessTokenFile: filepath.Join(dir, "token.txt"),
				},
				Connection: Connection{ConnectTimeout: 3 * time.Second, RequestTimeout: time.Minute, RetryLimit: 2, RetryDelay: 250 * time.Millisecond, StallTimeout: DefaultStallTimeout},
				Origin:     Origin{File: file, Line: 5},
			},
			{
				Name: "releases", URL: "grpc://10.0.0.1",
				Endpoint: Endpoint{Target: "10.0.0.1:80", ServerName: "10.0.0.1"},
				Type:     TypeAll, MaxConcurrency: DefaultMaxConcurrency, Compression: CompressionAuto,
				Connection: Connection{ConnectTimeout: DefaultConnectTimeout, RequestTimeout: DefaultRequestTimeout,
					RetryLimit: DefaultRetryLimit, RetryDelay: DefaultRetryDelay, StallTimeout: DefaultStallTimeout},
				Origin: Origin{File: file, Line: 26},
			},
		},
	}
	want.SourceCaches = want.Caches
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("Load (-want +got):\n%s", diff)
	}
	if c, ok := cfg.DefaultPush(); !ok || c.Name != "latest" {
		t.Errorf("DefaultPush = %v, %v; want latest", c, ok)
	}
}

func TestLoadErrors(t *testing.T) {
	files := map[string]string{"ca.pem": "x", "client.crt": "x", "client.key": "x", "helper.sh": "#!/bin/sh\n"}
	tests := []struct {
		name     string
		toml     string
		wantLine int
		wantKey  string
		wantMsg  string
	}{
		{"syntax", "jobs = 3\nformat = \"bst1\n", 2, "format", "newline"},
		{"unknown top-level key", "jobs = 3\nformt = \"bst1\"\n", 2, "formt", "unknown key: did you mean format?"},
		{"unknown key, nothing near", "frobnicate = 1\n", 1, "frobnicate", "unknown key"},
		{"unknown cache key", "[[cache]]\nname = \"a\"\nurl = \"http://h:1\"\n\n[[cache]]\nname = \"b\"\nurl = \"http://h:2\"\npushh = true\n", 8, "cache.pushh", "unknown key: did you mean push?"},
		{"unknown auth key", "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\n[cache.auth]\nserver-certs = \"ca.pem\"\n", 5, "cache.auth.server-certs", "unknown key: did you mean server-cert?"},
		{"unknown connection key", "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\n[cache.connection]\nretry-limt = 3\n", 5, "cache.connection.retry-limt", "unknown key: did you mean retry-limit?"},
		{"wrong type", "jobs = \"many\"\n", 1, "jobs", `want a whole number, got "many"`},
		{"bad format", "format = \"bst3\"\n", 1, "format", "not a format"},
		{"jobs out of range", "\njobs = 0\n", 2, "jobs", "between 1 and 1024"},
		{"missing name", "[[cache]]\nurl = \"http://h:1\"\n", 1, "cache.name", "missing"},
		{"invalid name", "[[cache]]\nname = \"Latest!\"\nurl = \"http://h:1\"\n", 2, "cache.name", "not a valid name"},
		{"duplicate name", "[[cache]]\nname = \"a\"\nurl = \"http://h:1\"\n[[cache]]\nname = \"a\"\nurl = \"http://h:2\"\n", 4, "cache.name", "duplicate cache name \"a\""},
		{"bad compression", "[[cache]]\nname = \"a\"\nurl = \"http://h:1\"\ncompression = \"gzip\"\n", 4, "cache \"a\": compression", `"gzip": want "auto" or "off"`},
		{"compression type", "[[cache]]\nname = \"a\"\nurl = \"http://h:1\"\ncompression = false\n", 4, "cache.compression", `want "auto" or "off", got false`},
		{"missing url", "[[cache]]\nname = \"a\"\n", 1, "cache \"a\": url", "missing"},
		{"unknown scheme", "[[cache]]\nname = \"a\"\nurl = \"ftp://h:1\"\n", 3, "cache \"a\": url", "unknown scheme \"ftp\""},
		{"no scheme", "[[cache]]\nname = \"a\"\nurl = \"h:1\"\n", 3, "cache \"a\": url", ""},
		{"url with path", "[[cache]]\nname = \"a\"\nurl = \"http://h:1/x\"\n", 3, "cache \"a\": url", "scheme://host[:port] only"},
		{"bad type", "[[cache]]\nname = \"a\"\nurl = \"http://h:1\"\ntype = \"both\"\n", 4, "cache \"a\": type", "not a cache type"},
		{"bad duration", "[[cache]]\nname = \"a\"\nurl = \"http://h:1\"\n[cache.connection]\nconnect-timeout = \"ten seconds\"\n", 5, "cache \"a\": connection.connect-timeout", "not a positive duration"},
		{"negative duration", "[[cache]]\nname = \"a\"\nurl = \"http://h:1\"\n[cache.connection]\nretry-delay = \"-1s\"\n", 5, "cache \"a\": connection.retry-delay", "not a positive duration"},
		{"missing cert file", "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\n[cache.auth]\nserver-cert = \"nope.pem\"\n", 5, "cache \"a\": auth.server-cert", "nope.pem not found"},
		{"missing token file", "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\n[cache.auth]\naccess-token = \"tok.txt\"\n", 5, "cache \"a\": auth.access-token", "token file not found"},
		{"client cert without key", "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\n[cache.auth]\nserver-cert = \"ca.pem\"\nclient-cert = \"client.crt\"\n", 6, "cache \"a\": auth.client-key", "client-key must be too"},
		{"client key without cert", "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\n[cache.auth]\nclient-key = \"client.key\"\n", 5, "cache \"a\": auth.client-cert", "client-cert must be too"},
		{"TLS file with plaintext url", "[[cache]]\nname = \"a\"\nurl = \"http://h:1\"\n[cache.auth]\nserver-cert = \"ca.pem\"\n", 5, "cache \"a\": auth.server-cert", "needs a TLS url"},
		{"helper not executable", "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\n[cache.auth]\ncredential-helper = \"helper.sh\"\n", 5, "cache \"a\": auth.credential-helper", "helper.sh is not executable"},
		{"missing helper", "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\n[cache.auth]\ncredential-helper = \"nope.sh\"\n", 5, "cache \"a\": auth.credential-helper", "nope.sh not found"},
		{"helper and token", "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\n[cache.auth]\naccess-token = \"ca.pem\"\ncredential-helper = \"helper.sh\"\n", 6, "cache \"a\": auth.credential-helper", "access-token or credential-helper, not both"},
		{"dotted key", "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\nauth.client-key = \"client.key\"\n", 4, "cache \"a\": auth.client-cert", "client-cert must be too"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := map[string]string{"bad.toml": tc.toml}
			for k, v := range files {
				f[k] = v
			}
			dir := testenv.WriteFiles(t, f)
			path := filepath.Join(dir, "bad.toml")
			_, err := Load(Options{File: path})
			if err == nil {
				t.Fatal("Load succeeded; want an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %T %v is not a *config.Error", err, err)
			}
			got := Error{File: ce.File, Line: ce.Line, Key: ce.Key}
			want := Error{File: path, Line: tc.wantLine, Key: tc.wantKey}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("error place (-want +got):\n%s\nerror: %v", diff, err)
			}
			if !strings.Contains(ce.Msg, tc.wantMsg) {
				t.Errorf("message %q does not contain %q", ce.Msg, tc.wantMsg)
			}
			if !strings.HasPrefix(err.Error(), path+":") {
				t.Errorf("error %q does not start with the file name", err)
			}
		})
	}
}

func TestTokenNeverInErrors(t *testing.T) {
	const secret = "ghp_verysecrettoken123"
	dir := testenv.WriteFiles(t, map[string]string{"c.toml": "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\n[cache.auth]\naccess-token = \"" + secret + "\"\n"})
	_, err := Load(Options{File: filepath.Join(dir, "c.toml")})
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Fatalf("error %v must exist and not contain the value", err)
	}
}

func TestUserAndProjectFiles(t *testing.T) {
	dir := testenv.WriteFiles(t, map[string]string{
		"home/config.toml":    "jobs = 5\n[[cache]]\nname = \"mine\"\nurl = \"http://mine:1\"\npush = true\n",
		"proj/bst-cache.toml": "format = \"bst1\"\njobs = 2\n[[cache]]\nname = \"project\"\nurl = \"http://proj:1\"\n",
		"home2/config.toml":   "override-project-caches = true\n[[cache]]\nname = \"mine\"\nurl = \"http://mine:1\"\n",
		"home3/config.toml":   "[[cache]]\nname = \"project\"\nurl = \"http://mine:1\"\n",
	})
	sub := filepath.Join(dir, "proj", "deep", "er")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	names := func(c *Config) []string {
		var n []string
		for _, cc := range c.Caches {
			n = append(n, cc.Name+"@"+cc.Origin.String())
		}
		return n
	}
	user := filepath.Join(dir, "home/config.toml")
	proj := filepath.Join(dir, "proj/bst-cache.toml")

	cfg, err := Load(Options{UserFile: user, WorkDir: sub})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"mine@" + user + ":2", "project@" + proj + ":3"}, names(cfg)); diff != "" {
		t.Errorf("caches (-want +got):\n%s", diff)
	}
	if cfg.Jobs != 5 || cfg.Format != cache.KindBst1Artifact {
		t.Errorf("jobs=%d format=%s; want the user's jobs (5) and the project's format (bst1)", cfg.Jobs, cfg.Format)
	}
	if diff := cmp.Diff([]string{user, proj}, cfg.Files); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}

	cfg, err = Load(Options{UserFile: filepath.Join(dir, "home2/config.toml"), WorkDir: sub})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Caches) != 1 || cfg.Caches[0].Name != "mine" {
		t.Errorf("override-project-caches: caches %v; want only mine", names(cfg))
	}

	_, err = Load(Options{UserFile: filepath.Join(dir, "home3/config.toml"), WorkDir: sub})
	if err == nil || !strings.Contains(err.Error(), "duplicate cache name \"project\"") || !strings.Contains(err.Error(), proj+":3:") {
		t.Errorf("duplicate across files: got %v", err)
	}

	// A project file may not drop caches: that is the user's choice.
	bad := testenv.WriteFiles(t, map[string]string{"bst-cache.toml": "override-project-caches = true\n"})
	_, err = Load(Options{UserFile: filepath.Join(bad, "none.toml"), WorkDir: bad})
	if err == nil || !strings.Contains(err.Error(), "only allowed in the user file") {
		t.Errorf("override in project file: got %v", err)
	}

	// --config reads that file alone.
	cfg, err = Load(Options{File: proj, UserFile: user, WorkDir: sub})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"project@" + proj + ":3"}, names(cfg)); diff != "" {
		t.Errorf("--config caches (-want +got):\n%s", diff)
	}
}

// A credential helper's path is relative to the config file, and printing
// the configuration names it without running it.
func TestCredentialHelperLoaded(t *testing.T) {
	dir := testenv.WriteFiles(t, map[string]string{
		"c.toml": "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\n[cache.auth]\ncredential-helper = \"bin/helper\"\n",
	})
	ran := filepath.Join(dir, "ran")
	helper := filepath.Join(dir, "bin", "helper")
	os.MkdirAll(filepath.Dir(helper), 0o755)
	if err := os.WriteFile(helper, []byte("#!/bin/sh\ntouch "+ran+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(Options{File: filepath.Join(dir, "c.toml")})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Caches[0].Auth.CredentialHelper; got != helper {
		t.Errorf("helper %q, want %q", got, helper)
	}
	var b strings.Builder
	if err := cfg.WriteTOML(&b); err != nil {
		t.Fatal(err)
	}
	if want := "credential-helper = " + strconv.Quote(helper); !strings.Contains(b.String(), want) {
		t.Errorf("WriteTOML does not show %s:\n%s", want, b.String())
	}
	if got := cfg.View().Caches[0].Auth.CredentialHelper; got != helper {
		t.Errorf("View: helper %q, want %q", got, helper)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Error("loading or printing the configuration ran the helper")
	}
}

func TestWriteTOMLRedactsToken(t *testing.T) {
	const secret = "tok-abcdef-123456"
	dir := testenv.WriteFiles(t, map[string]string{
		"token":  secret,
		"c.toml": "[[cache]]\nname = \"a\"\nurl = \"https://h:1\"\n[cache.auth]\naccess-token = \"token\"\n",
	})
	cfg, err := Load(Options{File: filepath.Join(dir, "c.toml")})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := cfg.WriteTOML(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if strings.Contains(out, secret) || !strings.Contains(out, `access-token = "***"`) {
		t.Errorf("WriteTOML must show the token as ***:\n%s", out)
	}
	if !strings.Contains(out, "# from "+filepath.Join(dir, "c.toml")+":1") {
		t.Errorf("WriteTOML must name each cache's origin:\n%s", out)
	}
}

func TestParseURL(t *testing.T) {
	v := validator{dir: "/etc/bst"}
	tests := []struct {
		in   string
		want Endpoint
	}{
		{"http://h", Endpoint{Target: "h:80", ServerName: "h"}},
		{"grpc://h:9092", Endpoint{Target: "h:9092", ServerName: "h"}},
		{"https://h", Endpoint{Target: "h:443", TLS: true, ServerName: "h"}},
		{"grpcs://[::1]:1234", Endpoint{Target: "[::1]:1234", TLS: true, ServerName: "::1"}},
		{"unix:/run/cas.sock", Endpoint{Target: "unix:///run/cas.sock"}},
		{"unix:cas.sock", Endpoint{Target: "unix:///etc/bst/cas.sock"}},
	}
	for _, tc := range tests {
		got, err := v.parseURL(tc.in)
		if err != nil {
			t.Errorf("parseURL(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("parseURL(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
	for _, bad := range []string{"http://", "http://h:0", "http://h:99999", "tcp://h:1", "unix:"} {
		if _, err := v.parseURL(bad); err == nil {
			t.Errorf("parseURL(%q) succeeded; want an error", bad)
		}
	}
}

// BuildStream's configuration is the default configuration: its caches
// come first with names made from their URLs and origins in BuildStream's
// files; a bst-cache.toml cache with the same URL takes its place and
// settings; inside a project the format and the local store follow it; a
// BuildStream YAML file given as --config is read as one.
func TestLoadBuildStreamConfiguration(t *testing.T) {
	dir := t.TempDir()
	write := func(rel, content string) string {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	t.Setenv("XDG_CACHE_HOME", filepath.Join(dir, "cache"))
	userConf := write("config/buildstream.conf", "artifacts:\n- url: http://global.example.com:11001\n  push: true\n")
	projectConf := write("proj/project.conf", "name: demo\nartifacts:\n- url: http://cache.example.com\n- url: http://Other_Host:8080\n")

	cfg, err := Load(Options{WorkDir: filepath.Join(dir, "proj"), UserFile: filepath.Join(dir, "none.toml")})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range cfg.Caches {
		got = append(got, fmt.Sprintf("%s %s push=%t %s", c.Name, c.URL, c.Push, c.Origin))
	}
	want := []string{
		"cache.example.com http://cache.example.com push=false " + projectConf + ":3",
		"other_host-8080 http://Other_Host:8080 push=false " + projectConf + ":4",
		"global.example.com-11001 http://global.example.com:11001 push=true " + userConf + ":2",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("caches (-want +got):\n%s", diff)
	}
	if cfg.Format != cache.KindBst1Artifact || cfg.Local != filepath.Join(dir, "cache", "buildstream", "artifacts") {
		t.Errorf("format %s, local %s: want bst1 and BuildStream 1's artifact directory", cfg.Format, cfg.Local)
	}

	// A bst-cache.toml names one by URL and adds its own.
	toml := write("proj/bst-cache.toml", "[[cache]]\nname = \"latest\"\nurl = \"http://cache.example.com\"\nmax-concurrency = 3\n\n[[cache]]\nname = \"extra\"\nurl = \"http://extra\"\n")
	cfg, err = Load(Options{WorkDir: filepath.Join(dir, "proj"), UserFile: filepath.Join(dir, "none.toml")})
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	for _, c := range cfg.Caches {
		got = append(got, fmt.Sprintf("%s %d %s", c.Name, c.MaxConcurrency, c.Origin))
	}
	want = []string{"latest 3 " + toml + ":1", "other_host-8080 64 " + projectConf + ":4", "global.example.com-11001 64 " + userConf + ":2", "extra 64 " + toml + ":6"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("caches with a bst-cache.toml (-want +got):\n%s", diff)
	}

	// --config with BuildStream's YAML: read as such, outside a project.
	other := write("elsewhere.conf", "artifacts:\n  url: https://one.example.com\n")
	cfg, err = Load(Options{File: other, WorkDir: dir})
	if err != nil || len(cfg.Caches) != 1 || cfg.Caches[0].Name != "one.example.com" {
		t.Errorf("--config with a BuildStream file: %v %+v", err, cfg)
	}
	bad := write("bad.yaml", "artifacts:\n- url: http://a\n  push: maybe\n")
	if _, err := Load(Options{File: bad, WorkDir: dir}); err == nil || !strings.Contains(err.Error(), bad+":3: push") {
		t.Errorf("a bad BuildStream file: %v; want its file, line and key", err)
	}
}
