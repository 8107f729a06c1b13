package testenv

import (
	"context"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// ArtifactServerOptions configures StartArtifactServer.
type ArtifactServerOptions struct {
	Push bool
	// TLS: all three are PEM file paths; ClientCerts turns on client
	// certificate checks.
	ServerKey, ServerCert, ClientCerts string
	// Dir is the repository; a fresh temporary directory when empty.
	Dir string
}

// serverFlags are the flags bst-artifact-server and serve share (serve is
// a drop-in): push, and TLS with optional client certificate checks.
func serverFlags(push bool, key, cert, clientCerts string) []string {
	var args []string
	if push {
		args = append(args, "--enable-push")
	}
	if key != "" {
		args = append(args, "--server-key", key, "--server-cert", cert)
	}
	if clientCerts != "" {
		args = append(args, "--client-certs", clientCerts)
	}
	return args
}

// StartArtifactServer starts a bst-artifact-server on a free loopback port.
func StartArtifactServer(t testing.TB, o ArtifactServerOptions) *Server {
	t.Helper()
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import buildstream._artifactcache.casserver").Run(); err != nil {
		Missing(t, "bst-artifact-server: BuildStream 1.6 is not installed for %s (apt-get install buildstream)", py)
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	port := FreePort(t)
	args := []string{filepath.Join(RepoRoot(t), "scripts", "bst-artifact-server"), "--port", strconv.Itoa(port)}
	args = append(args, serverFlags(o.Push, o.ServerKey, o.ServerCert, o.ClientCerts)...)
	args = append(args, o.Dir)
	cmd := exec.Command(py, args...)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var ready func(context.Context) error
	if o.ServerKey != "" {
		ready = tcpReady(addr)
	}
	s := start(t, "bst-artifact-server", cmd, addr, ready)
	s.Dir = o.Dir
	return s
}

// Bst runs BuildStream 1.6's bst with its own XDG directories, so it sees no
// user configuration and keeps its cache in a test directory.
type Bst struct {
	Home string
	env  []string
}

// NewBst prepares a bst client with an empty cache.
func NewBst(t testing.TB) *Bst {
	t.Helper()
	if _, err := exec.LookPath("bst"); err != nil {
		Missing(t, "bst (BuildStream 1.6) is not installed (apt-get install buildstream)")
	}
	home := t.TempDir()
	b := &Bst{Home: home}
	for _, kv := range [][2]string{{"XDG_CACHE_HOME", "cache"}, {"XDG_CONFIG_HOME", "config"}, {"XDG_DATA_HOME", "data"}} {
		dir := filepath.Join(home, kv[1])
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		b.env = append(b.env, kv[0]+"="+dir)
	}
	return b
}

// Env is bst's environment: its XDG directories, for running bst-cache
// as this bst's user.
func (b *Bst) Env() map[string]string {
	out := map[string]string{"HOME": b.Home}
	for _, kv := range b.env {
		k, v, _ := strings.Cut(kv, "=")
		out[k] = v
	}
	return out
}

// WriteUserConfig writes bst's user configuration file as given.
func (b *Bst) WriteUserConfig(t testing.TB, conf string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(b.Home, "config", "buildstream.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

// ArtifactDir is bst's local artifact cache (bst1 layout).
func (b *Bst) ArtifactDir() string { return filepath.Join(b.Home, "cache", "buildstream", "artifacts") }

// Run runs bst in project dir and returns its output; a failure fails t.
func (b *Bst) Run(t testing.TB, project string, args ...string) string {
	t.Helper()
	return run(t, project, b.env, "bst", append([]string{"--no-interactive", "--no-colors"}, args...)...)
}

// Output runs bst in project dir and returns what it printed on stdout
// alone; a failure fails t.
func (b *Bst) Output(t testing.TB, project string, args ...string) string {
	t.Helper()
	cmd := exec.Command("bst", append([]string{"--no-interactive", "--no-colors"}, args...)...)
	cmd.Dir = project
	cmd.Env = append(os.Environ(), b.env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bst %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

// RefsOnDisk lists the refs of a bst1 cache directory by walking its refs
// directory directly, sorted: what bst itself wrote, independent of bst-cache.
func RefsOnDisk(t testing.TB, artifacts string) []string {
	t.Helper()
	heads := filepath.Join(artifacts, "cas", "refs", "heads")
	var refs []string
	if _, err := os.Stat(heads); os.IsNotExist(err) {
		return nil
	}
	err := filepath.WalkDir(heads, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(heads, p)
		refs = append(refs, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(refs)
	return refs
}

// BstRemote is one artifact cache in bst's user configuration.
type BstRemote struct {
	URL  string
	Push bool
	// TLS, as bst 1.6 names them: PEM file paths.
	ServerCert, ClientKey, ClientCert string
}

// UseCaches writes bst's user configuration with these artifact caches,
// first listed first asked.
func (b *Bst) UseCaches(t testing.TB, remotes ...BstRemote) {
	t.Helper()
	conf := "artifacts:\n"
	for _, r := range remotes {
		conf += "- url: " + r.URL + "\n  push: " + strconv.FormatBool(r.Push) + "\n"
		for k, v := range map[string]string{"server-cert": r.ServerCert, "client-key": r.ClientKey, "client-cert": r.ClientCert} {
			if v != "" {
				conf += "  " + k + ": " + v + "\n"
			}
		}
	}
	if len(remotes) == 0 {
		conf = "artifacts: []\n"
	}
	if err := os.WriteFile(filepath.Join(b.Home, "config", "buildstream.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Checkout checks element out of bst's local cache into a new directory.
func (b *Bst) Checkout(t testing.TB, p *Project, element string) string {
	t.Helper()
	dest := filepath.Join(t.TempDir(), "checkout")
	b.Run(t, p.Dir, "checkout", element, dest)
	return dest
}
