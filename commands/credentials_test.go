package commands_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// startPull runs the bst-cache binary's pull in the background.
func startPull(t *testing.T, cfg, local string, args ...string) (wait func() (int, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, testenv.BstCacheBinary(t), append([]string{"--config", cfg, "--local", local}, args...)...)
	cmd.Env = append(cmd.Environ(), "BST_CACHE_CONFIG=", "HOME="+t.TempDir())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	return func() (int, string) {
		<-done
		return cmd.ProcessState.ExitCode(), out.String()
	}
}

// served fills a store for serve with count refs of about 1 MiB each
// (16 blobs of 64 KiB), so a pull makes several calls per ref.
func served(t *testing.T, count int) (dir string, refs []string) {
	dir = filepath.Join(t.TempDir(), "repo")
	return dir, bst1Artifacts(t, dir, "proj/rot-%d/key", count, 16, 64<<10, 0, 11)
}

// A token rotated on the server and in the client's file while a pull is
// under way: the pull goes on with the new token and ends exit 0, and a
// client with the old token is refused once the server's file changed.
func TestAccessTokenRotatedDuringPull(t *testing.T) {
	dir := t.TempDir()
	serverTok, clientTok, oldTok := filepath.Join(dir, "server"), filepath.Join(dir, "client"), filepath.Join(dir, "old")
	for _, p := range []string{serverTok, clientTok, oldTok} {
		testenv.ReplaceFile(t, p, "token-before-rotation\n")
	}
	store, refs := served(t, 8)
	logPath := filepath.Join(dir, "access.log")
	srv := testenv.StartServe(t, testenv.ServeOptions{Dir: store, Args: []string{"--access-token", serverTok, "--access-log", logPath}})
	cfg := writeConfig(t, tokenCacheTOML(srv.URL(), clientTok, false))
	old := writeConfig(t, tokenCacheTOML(srv.URL(), oldTok, false))

	// 8 MiB at 2 MiB/s: about 4 s, the rotation after 1.5 s.
	wait := startPull(t, cfg, t.TempDir(), append([]string{"--bwlimit", "2MiB/s", "--jobs", "2", "pull"}, refs...)...)
	time.Sleep(1500 * time.Millisecond)
	rotated := time.Now()
	// The server first, as an admin would: a client that still sends the
	// old token is refused, reads its file again and goes on.
	testenv.ReplaceFile(t, serverTok, "token-after-rotation\n")
	testenv.ReplaceFile(t, clientTok, "token-after-rotation\n")
	code, out := wait()
	if code != 0 {
		t.Fatalf("pull across a token rotation: exit %d\n%s\nserve:\n%s", code, out, srv.Log())
	}
	// The pull made calls after the server surely had the new token: the
	// rotation happened under it, not after it.
	var after, refused int
	for _, l := range readAccessLog(t, logPath) {
		if l.Code == "Unauthenticated" {
			refused++
		}
		if ts, _ := time.Parse(time.RFC3339Nano, l.Time); ts.After(rotated.Add(1100*time.Millisecond)) && l.Code == "OK" {
			after++
		}
	}
	if after == 0 {
		t.Fatalf("no call of the pull passed with the new token: the pull ended before the rotation took\n%s", out)
	}
	t.Logf("%d calls passed with the new token; %d refused (the old token, sent before the client read its file again)", after, refused)

	_, stderr, code := runCLI(t, "", "--config", old, "--local", t.TempDir(), "pull", refs[0])
	if code != 1 || !strings.Contains(stderr, "not authenticated") {
		t.Fatalf("a client with the old token: exit %d, want 1 (not authenticated)\n%s", code, stderr)
	}
	if _, stderr, code := runCLI(t, "", "--config", cfg, "--local", t.TempDir(), "pull", refs[0]); code != 0 {
		t.Fatalf("a client with the new token: exit %d\n%s", code, stderr)
	}
}

// helperTOML is a cache whose headers come from a credential helper.
func helperTOML(url, helper string) string {
	return "format = \"bst1\"\n" + cacheTOML("serve", url, false) + fmt.Sprintf("[cache.auth]\ncredential-helper = %q\n", helper)
}

// writeHelper writes an executable script.
func writeHelper(t *testing.T, path, script string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/bash\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// A credential helper whose tokens expire every 2 seconds, over a pull
// of about 8 s. The test stands for an identity provider: every 2 s it
// issues token-N, writes it to serve's --access-token file (serve then
// accepts only it), and then hands it to the helper with "expires" 1 s
// after the next rotation, as short-lived tokens overlap their successor.
// The pull ends exit 0; the helper ran several times but far fewer than
// the calls made; its stdout (the tokens) appears nowhere in the output.
func TestCredentialHelperExpiring(t *testing.T) {
	dir := t.TempDir()
	serverTok, response, runs := filepath.Join(dir, "server-token"), filepath.Join(dir, "response.json"), filepath.Join(dir, "runs")
	const period = 2
	issue := func(now time.Time) int64 {
		n := now.Unix() / period
		testenv.ReplaceFile(t, serverTok, fmt.Sprintf("token-%d\n", n))
		expires := time.Unix((n+1)*period+1, 0).UTC().Format(time.RFC3339)
		testenv.ReplaceFile(t, response, fmt.Sprintf(`{"headers": {"Authorization": ["Bearer token-%d"]}, "expires": %q}`, n, expires))
		return n
	}
	issued := issue(time.Now())
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			case now := <-time.After(20 * time.Millisecond):
				if now.Unix()/period != issued {
					issued = issue(now)
				}
			}
		}
	}()
	defer func() { close(stop); <-stopped }()

	helper := filepath.Join(dir, "helper")
	writeHelper(t, helper, fmt.Sprintf("[ \"$1\" = get ] || exit 2\ncat >> %s\necho >> %s\ncat %s\n", runs, runs, response))
	store, refs := served(t, 8)
	logPath := filepath.Join(dir, "access.log")
	srv := testenv.StartServe(t, testenv.ServeOptions{Dir: store, Args: []string{"--access-token", serverTok, "--access-log", logPath}})
	cfg := writeConfig(t, helperTOML(srv.URL(), helper))

	start := time.Now()
	wait := startPull(t, cfg, t.TempDir(), append([]string{"-v", "--bwlimit", "1MiB/s", "--jobs", "2", "pull"}, refs...)...)
	code, out := wait()
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("pull with expiring tokens: exit %d\n%s\nserve:\n%s", code, out, srv.Log())
	}
	if strings.Contains(out, "token-") {
		t.Errorf("the helper's output shows in bst-cache's:\n%s", out)
	}
	raw, _ := os.ReadFile(runs)
	requests := strings.Split(strings.TrimSpace(string(raw)), "\n")
	for _, r := range requests {
		if r != fmt.Sprintf(`{"uri":"http://%s/"}`, srv.Addr) {
			t.Errorf("the helper was asked %q", r)
		}
	}
	calls := len(readAccessLog(t, logPath)) - 1 // testenv's readiness probe aside
	t.Logf("pull took %s: %d calls, the helper ran %d times", took.Round(time.Millisecond), calls, len(requests))
	if took < 3*period*time.Second {
		t.Fatalf("the pull took %s: not several expiries (%d s)", took, period)
	}
	// Once per token at least (the first, and one per rotation it spans),
	// not once per call.
	if min := int(took/(period*time.Second)) - 1; len(requests) < min || len(requests)*3 > calls {
		t.Errorf("the helper ran %d times for %d calls over %s: want at least %d, and far fewer than the calls", len(requests), calls, took, min)
	}
}

// A helper that fails: the run ends as an authentication failure does
// (exit 1), naming the cache and the helper and quoting its stderr; its
// stdout never shows. So does a helper whose output is not the protocol's
// JSON.
func TestCredentialHelperFails(t *testing.T) {
	dir := t.TempDir()
	srvTok := filepath.Join(dir, "token")
	testenv.ReplaceFile(t, srvTok, "the-token\n")
	srv := testenv.StartServe(t, testenv.ServeOptions{Args: []string{"--access-token", srvTok}})
	for _, tc := range []struct{ name, script, want string }{
		{"fails", "echo '{\"headers\": {\"Authorization\": [\"Bearer SECRET-ON-STDOUT\"]}}'\necho 'no credentials for this host' >&2\nexit 1\n", `exit status 1; it said "no credentials for this host"`},
		{"garbage", "echo 'SECRET-ON-STDOUT is not json'\n", "its output is not the JSON object the credential helper protocol asks for"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			helper := filepath.Join(t.TempDir(), "helper")
			writeHelper(t, helper, tc.script)
			cfg := writeConfig(t, helperTOML(srv.URL(), helper))
			stdout, stderr, code := runCLI(t, "", "--config", cfg, "--local", t.TempDir(), "-v", "pull", "proj/a/key")
			if code != 1 {
				t.Fatalf("exit %d, want 1\n%s%s", code, stdout, stderr)
			}
			want := fmt.Sprintf("credential helper %s for cache \"serve\": %s", helper, tc.want)
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr does not say %q:\n%s", want, stderr)
			}
			if strings.Contains(stdout+stderr, "SECRET") {
				t.Errorf("the helper's stdout shows:\n%s%s", stdout, stderr)
			}
		})
	}
}
