package buildstream

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// urls lists "url push type" per cache, with cert paths relative to dir.
func summary(dir string, rs []Remote) []string {
	var out []string
	for _, r := range rs {
		s := r.URL
		if r.Push {
			s += " push"
		}
		if r.Type != "all" {
			s += " " + r.Type
		}
		if r.InstanceName != "" {
			s += " instance=" + r.InstanceName
		}
		for _, p := range []string{r.ServerCert, r.ClientCert, r.AccessToken} {
			if p != "" {
				rel, _ := filepath.Rel(dir, p)
				s += " " + rel
			}
		}
		out = append(out, s)
	}
	return out
}

// BuildStream's configuration variants, read as the BuildStream version
// they are for reads them.
func TestCaches(t *testing.T) {
	cases := []struct {
		name    string
		format  cache.Kind
		user    string // buildstream.conf; "" for none
		project string // project.conf, under proj/
		want    []string
		err     string // a substring, with file and line
	}{
		{
			name: "bst1 single mapping in the user file", format: cache.KindBst1Artifact,
			user:    "artifacts:\n  url: https://user:11001\n  push: true\n",
			project: "name: demo\n",
			want:    []string{"https://user:11001 push"},
		},
		{
			name: "bst1 order: user override for the project, project.conf, user list", format: cache.KindBst1Artifact,
			user:    "artifacts:\n- url: http://global1\n- url: http://global2\nprojects:\n  demo:\n    artifacts:\n    - url: http://override\n",
			project: "name: demo\nartifacts:\n- url: http://recommended\n  server-cert: certs/ca.pem\n",
			want:    []string{"http://override", "http://recommended proj/certs/ca.pem", "http://global1", "http://global2"},
		},
		{
			name: "bst1 a cache listed twice counts once", format: cache.KindBst1Artifact,
			user:    "artifacts:\n- url: http://same\n",
			project: "name: demo\nartifacts:\n  url: http://same\n",
			want:    []string{"http://same"},
		},
		{
			name: "bst1 rejects bst2's keys", format: cache.KindBst1Artifact,
			user: "artifacts:\n- url: http://a\n  instance-name: x\n", project: "name: demo\n",
			err: "buildstream.conf:3: instance-name: not a key BuildStream 1 accepts",
		},
		{
			name: "bst2 user servers, then project.conf; type, instance, auth relative to the project", format: cache.KindBst2Artifact,
			user:    "artifacts:\n  servers:\n  - url: https://user\n    push: true\n    type: index\n",
			project: "name: demo\nmin-version: 2.0\nartifacts:\n- url: https://recommended\n  instance-name: main\n  auth:\n    server-cert: ca.pem\n    access-token: token\n",
			want:    []string{"https://user push index", "https://recommended instance=main proj/ca.pem proj/token"},
		},
		{
			name: "bst2 project override replaces the user's servers", format: cache.KindBst2Artifact,
			user:    "artifacts:\n  servers:\n  - url: https://global\nprojects:\n  demo:\n    artifacts:\n      servers:\n      - url: https://mine\n",
			project: "name: demo\nmin-version: 2.0\nartifacts:\n- url: https://recommended\n",
			want:    []string{"https://mine", "https://recommended"},
		},
		{
			name: "bst2 override-project-caches drops project.conf's", format: cache.KindBst2Artifact,
			user:    "artifacts:\n  override-project-caches: true\n  servers:\n  - url: https://only\n",
			project: "name: demo\nmin-version: 2.0\nartifacts:\n- url: https://recommended\n",
			want:    []string{"https://only"},
		},
		{
			name: "bad YAML names file and line", format: cache.KindBst1Artifact,
			user: "artifacts:\n- url: http://a\n  push: [\n", project: "name: demo\n",
			err: "buildstream.conf:3: did not find expected node content",
		},
		{
			name: "bst2 refuses BuildStream 1's form of the user section", format: cache.KindBst2Artifact,
			user: "artifacts:\n  url: http://a\n", project: "name: demo\nmin-version: 2.0\n",
			err: "buildstream.conf:2: artifacts.url: not a key BuildStream 2 accepts here",
		},
		{
			name: "bst2 bad type", format: cache.KindBst2Artifact,
			user: "artifacts:\n  servers:\n  - url: http://a\n    type: both\n", project: "name: demo\nmin-version: 2.0\n",
			err: "buildstream.conf:4: type: want index, storage or all",
		},
		{
			name: "client-key without client-cert", format: cache.KindBst1Artifact,
			user: "", project: "name: demo\nartifacts:\n- url: https://a\n  client-key: k.pem\n",
			err: "project.conf:3: client-key: client-key and client-cert go together",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			files := map[string]string{"proj/project.conf": c.project}
			if c.user != "" {
				files["config/buildstream.conf"] = c.user
			}
			dir := testenv.WriteFiles(t, files)
			u, err := LoadUserConfig(UserConfigFile(filepath.Join(dir, "config"), c.format), c.format)
			var got []Remote
			if err == nil {
				var p *Project
				if p, err = LoadProject(filepath.Join(dir, "proj")); err == nil {
					if p.Format != c.format {
						t.Errorf("project format %s, want %s", p.Format, c.format)
					}
					got, err = Caches(u, p, "artifacts")
				}
			}
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v; want one containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, summary(dir, got)); diff != "" {
				t.Errorf("caches (-want +got):\n%s", diff)
			}
			for _, r := range got {
				if r.File == "" || r.Line == 0 {
					t.Errorf("%s: no origin", r.URL)
				}
			}
		})
	}
}

func TestCacheDir(t *testing.T) {
	dir := testenv.WriteFiles(t, map[string]string{"b1.conf": "artifactdir: ${XDG_CACHE_HOME}/elsewhere\n", "b2.conf": "cachedir: /srv/bst\n"})
	u1, _ := LoadUserConfig(filepath.Join(dir, "b1.conf"), cache.KindBst1Artifact)
	u2, _ := LoadUserConfig(filepath.Join(dir, "b2.conf"), cache.KindBst2Artifact)
	none1, _ := LoadUserConfig("", cache.KindBst1Artifact)
	none2, _ := LoadUserConfig("", cache.KindBst2Artifact)
	got := []string{u1.CacheDir("/c"), u2.CacheDir("/c"), none1.CacheDir("/c"), none2.CacheDir("/c")}
	want := []string{"/c/elsewhere", "/srv/bst", "/c/buildstream/artifacts", "/c/buildstream"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("cache dirs (-want +got):\n%s", diff)
	}
}

// Refs as BuildStream 1.6 and 2 make them.
func TestArtifactRef(t *testing.T) {
	for _, c := range []struct{ project, element, want string }{
		{"demo", "hello.bst", "demo/hello/k"},
		{"demo", "apps/app.bst", "demo/apps-app/k"},
		{"demo", "odd name+x.bst", "demo/odd_name_x/k"},
		{"demo", "lib.v2.bst", "demo/lib.v2/k"},
		{"demo", ".hidden", "demo/.hidden/k"},
	} {
		if got := ArtifactRef(c.project, c.element, "k"); got != c.want {
			t.Errorf("ArtifactRef(%q, %q) = %q, want %q", c.project, c.element, got, c.want)
		}
	}
	if got := WithKey("demo/apps-app/strong", "weak"); got != "demo/apps-app/weak" {
		t.Errorf("WithKey = %q", got)
	}
}

// bst show's records, as bst 1.6 prints them with showFormat.
func TestParseShow(t *testing.T) {
	out := marker + "base.bst" + marker + "k1" + marker + "cached" + marker + "\nlib: lib\nproject-name: demo\nelement-name: base.bst\n__bst_provenance_info: /x.yaml\n  [line 20 column 2]\n\n" +
		marker + "sub.bst:libsub.bst" + marker + "k2" + marker + "buildable" + marker + "\nproject-name: sub\nelement-name: libsub.bst\n"
	els, err := parseShow(out, []string{"app.bst"}, false)
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, e := range els {
		refs = append(refs, e.Name+"="+e.Ref())
	}
	if diff := cmp.Diff([]string{"base.bst=demo/base/k1", "sub.bst:libsub.bst=sub/libsub/k2"}, refs); diff != "" {
		t.Errorf("refs (-want +got):\n%s", diff)
	}
	for in, want := range map[string]string{
		marker + "a.bst" + marker + "k" + marker + "no reference" + marker + "\nproject-name: d\nelement-name: a.bst\n":                "a.bst: its sources have no reference",
		marker + "a.bst" + marker + strings.Repeat("?", 64) + marker + "waiting" + marker + "\nproject-name: d\nelement-name: a.bst\n": "a.bst: bst cannot compute its cache key",
		"": "bst show printed no elements",
	} {
		if _, err := parseShow(in, []string{"a.bst"}, false); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseShow(%q) = %v; want %q", in, err, want)
		}
	}
}

func TestParseMeta(t *testing.T) {
	k, err := ParseKeys([]byte("strong: s\nweak: w\n"))
	if err != nil || !cmp.Equal(k.All(), []string{"s", "w"}) {
		t.Errorf("keys %v %v", k, err)
	}
	if k, _ := ParseKeys([]byte("strong: s\nweak: s\n")); len(k.All()) != 1 {
		t.Errorf("equal keys: %v", k.All())
	}
	deps, err := ParseDependencies([]byte("lib.bst: k2\nbase.bst: k1\n"))
	if err != nil || len(deps) != 2 || deps[0].Ref("demo") != "demo/base/k1" {
		t.Errorf("dependencies %v %v", deps, err)
	}
}

// projects.NAME.strict, as bst 1.6 reads it: true unless false.
func TestUserConfigStrict(t *testing.T) {
	project := &Project{Name: "demo"}
	for conf, want := range map[string]string{
		"": "true",
		"projects:\n  demo:\n    strict: false\n":  "false",
		"projects:\n  demo:\n    strict: True\n":   "true",
		"projects:\n  other:\n    strict: false\n": "true",
		"projects:\n  demo:\n    strict: maybe\n":  "projects.demo.strict: want true or false",
	} {
		p := filepath.Join(t.TempDir(), "buildstream.conf")
		if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		u, err := LoadUserConfig(p, cache.KindBst1Artifact)
		if err != nil {
			t.Fatal(err)
		}
		strict, err := u.Strict(project)
		got := strconv.FormatBool(strict)
		if err != nil {
			got = err.Error()
		}
		if !strings.Contains(got, want) {
			t.Errorf("%q: %s, want %s", conf, got, want)
		}
	}
}
