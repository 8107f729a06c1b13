package commands_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// logLine is a line of serve --access-log.
type logLine struct {
	Time       string   `json:"time"`
	Peer       string   `json:"peer"`
	Method     string   `json:"method"`
	Instance   *string  `json:"instance"`
	Code       string   `json:"code"`
	BytesIn    *int64   `json:"bytes_in"`
	BytesOut   *int64   `json:"bytes_out"`
	DurationMS *float64 `json:"duration_ms"`
	Refs       []string `json:"refs"`
	RefCount   int      `json:"ref_count"`
	Asked      *int     `json:"digests_asked"`
	Missing    *int     `json:"digests_missing"`
	Tool       string   `json:"tool"`
	ToolVer    string   `json:"tool_version"`
	Invocation string   `json:"invocation_id"`
	Error      string   `json:"error"`
	Dropped    int64    `json:"dropped_lines"`
}

// readAccessLog reads the lines of an access log; every line must be one
// JSON object with no unknown field.
func readAccessLog(t *testing.T, path string) []logLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []logLine
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l logLine
		d := json.NewDecoder(strings.NewReader(sc.Text()))
		d.DisallowUnknownFields()
		if err := d.Decode(&l); err != nil {
			t.Fatalf("%s: line %q: %v", path, sc.Text(), err)
		}
		lines = append(lines, l)
	}
	return lines
}

// callCounter counts calls by method, as the proxy in front of serve saw
// them.
type callCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *callCounter) add(method string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[method]++
}

func (c *callCounter) counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

func (c *callCounter) total() (n int) {
	for _, v := range c.counts() {
		n += v
	}
	return n
}

// byMethod counts log lines by method.
func byMethod(lines ...[]logLine) map[string]int {
	out := map[string]int{}
	for _, ls := range lines {
		for _, l := range ls {
			out[l.Method]++
		}
	}
	return out
}

// waitLines waits until the logs at paths hold n lines between them (the
// log is written behind the calls) and returns them.
func waitLines(t *testing.T, n int, paths ...string) [][]logLine {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var all [][]logLine
		got := 0
		for _, p := range paths {
			ls := readAccessLog(t, p)
			all = append(all, ls)
			got += len(ls)
		}
		if got == n || time.Now().After(deadline) {
			return all
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tokenCacheTOML is a cache that sends the token in tokenFile.
func tokenCacheTOML(url, tokenFile string, push bool) string {
	return "format = \"bst1\"\n" + cacheTOML("serve", url, push) + fmt.Sprintf("[cache.auth]\naccess-token = %q\n", tokenFile)
}

// serve --access-log: a push of 3 refs, a pull of them and of one ref no
// cache has, and a client with a wrong token, all through a proxy that
// counts the calls: the log has exactly one line per call the proxy
// passed, per method; one line per FindMissingBlobs whatever the number
// of digests; the refs the clients named; each run's tool and invocation
// id; never the token.
func TestAccessLog(t *testing.T) {
	dir := t.TempDir()
	const secret = "s3cret-t0ken-for-the-access-log-test"
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte(secret+"\n"), 0o600)
	wrongFile := filepath.Join(dir, "wrong")
	os.WriteFile(wrongFile, []byte("not-"+secret+"\n"), 0o600)
	logPath := filepath.Join(dir, "access.log")
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true, Args: []string{"--access-token", tokenFile, "--access-log", logPath}})
	var calls callCounter
	proxy := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{OnCall: calls.add})
	cfg := writeConfig(t, tokenCacheTOML("http://"+proxy, tokenFile, true))
	wrong := writeConfig(t, tokenCacheTOML("http://"+proxy, wrongFile, false))

	local := t.TempDir()
	refs := bst1Artifacts(t, local, "proj/logged-%d/key", 3, 6, 4<<10, 1<<20, 7)
	push, stderr, code := runJSON(t, append([]string{"--config", cfg, "--local", local, "push"}, refs...)...)
	if code != 0 {
		t.Fatalf("push: exit %d\n%s", code, stderr)
	}
	pushCalls := calls.total()
	missing := "proj/never-pushed/key"
	_, stderr, code = runJSON(t, append([]string{"--config", cfg, "--local", t.TempDir(), "pull"}, append(refs, missing)...)...)
	if code != 3 {
		t.Fatalf("pull with a missing ref: exit %d, want 3\n%s", code, stderr)
	}
	pullCalls := calls.total()
	_, stderr, code = runJSON(t, "--config", wrong, "--local", t.TempDir(), "pull", refs[0])
	if code != 1 || !strings.Contains(stderr, "not authenticated") {
		t.Fatalf("pull with a wrong token: exit %d, want 1 (not authenticated)\n%s", code, stderr)
	}

	want := calls.counts()
	lines := waitLines(t, calls.total(), logPath)[0]
	if diff := cmp.Diff(want, byMethod(lines)); diff != "" {
		t.Fatalf("log lines per method against the calls the proxy passed (-proxy +log):\n%s", diff)
	}
	raw, _ := os.ReadFile(logPath)
	if strings.Contains(string(raw), secret) || strings.Contains(strings.ToLower(string(raw)), "bearer") {
		t.Fatal("the access log holds the token")
	}

	runs := map[string]bool{}
	named := map[string]bool{}
	var asked, foundMissing, pushMissing, unauthenticated int
	var pushedIn int64
	for i, l := range lines {
		ts, err := time.Parse(time.RFC3339Nano, l.Time)
		if err != nil || !strings.HasSuffix(l.Time, "Z") || len(l.Time) != len("2006-01-02T15:04:05.000Z") || time.Since(ts) > time.Hour {
			t.Errorf("line %d: time %q: want UTC RFC 3339 with milliseconds, now (%v)", i, l.Time, err)
		}
		if !strings.HasPrefix(l.Peer, "127.0.0.1:") || l.Instance == nil || *l.Instance != "" || l.BytesIn == nil || l.BytesOut == nil || l.DurationMS == nil || *l.DurationMS < 0 {
			t.Errorf("line %d: peer, instance, bytes or duration missing: %+v", i, l)
		}
		if l.Tool != "bst-cache" || l.ToolVer != "test" || l.Invocation == "" {
			t.Errorf("line %d: tool %q %q, invocation %q: want bst-cache test and an id", i, l.Tool, l.ToolVer, l.Invocation)
		}
		runs[l.Invocation] = true
		for _, r := range l.Refs {
			named[r] = true
		}
		if l.RefCount != len(l.Refs) {
			t.Errorf("line %d: ref_count %d for %d refs (under the bound)", i, l.RefCount, len(l.Refs))
		}
		isFind := strings.HasSuffix(l.Method, "/FindMissingBlobs")
		if isFind != (l.Asked != nil) || isFind != (l.Missing != nil) {
			t.Errorf("line %d: digests_asked/missing on %s", i, l.Method)
		}
		// Runs are one after the other, and a call's line is queued before
		// its client has the answer: the lines come in the runs' order.
		if (l.Code == "Unauthenticated") != (i >= pullCalls) {
			t.Errorf("line %d of %d: %s %s (the wrong token's calls start at %d)", i, len(lines), l.Method, l.Code, pullCalls)
		}
		if l.Code == "Unauthenticated" {
			unauthenticated++
			if l.Error == "" || strings.Contains(l.Error, secret) {
				t.Errorf("line %d: a refusal without its reason: %+v", i, l)
			}
			continue
		}
		if l.Code != "OK" && l.Code != "NotFound" && l.Code != "InvalidArgument" && l.Code != "Unimplemented" {
			t.Errorf("line %d: code %s on %s: %s", i, l.Code, l.Method, l.Error)
		}
		if isFind {
			asked += *l.Asked
			foundMissing += *l.Missing
			if i < pushCalls {
				pushMissing += *l.Missing
			}
			if *l.Missing > *l.Asked {
				t.Errorf("line %d: %d missing of %d asked", i, *l.Missing, *l.Asked)
			}
		}
		if i < pushCalls {
			pushedIn += *l.BytesIn
		}
	}
	// 3 runs that reached the server: push, pull, the wrong token's pull.
	if len(runs) != 3 {
		t.Errorf("%d invocation ids, want 3 (one per run)", len(runs))
	}
	if unauthenticated == 0 {
		t.Error("no line for the calls with the wrong token")
	}
	for _, r := range append(refs, missing) {
		if !named[r] && !named["urn:fdc:buildstream.build:2020:v1:"+r] {
			t.Errorf("no line names %s (named: %v)", r, named)
		}
	}
	// Every blob the push moved was reported missing first: one line per
	// FindMissingBlobs, however many digests it asked about.
	if pushMissing < int(push.Pushed.Blobs) || asked <= want["/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"] {
		t.Errorf("push: %d digests reported missing for %d blobs pushed; %d digests asked in %d calls", pushMissing, push.Pushed.Blobs, asked, want["/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"])
	}
	if pushedIn < push.Pushed.Bytes || pushedIn > push.Pushed.Bytes+push.Pushed.Bytes/10+64<<10 {
		t.Errorf("push: %d bytes in logged for %d bytes pushed", pushedIn, push.Pushed.Bytes)
	}
}

// logrotate's copy-less rotation: the log renamed, then SIGHUP. Lines
// of the calls before go to the renamed file, those after to a new one,
// and none is lost: between them, exactly one line per call.
func TestAccessLogReopenedOnHangup(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")
	srv := testenv.StartServe(t, testenv.ServeOptions{Push: true, Args: []string{"--access-log", logPath}})
	var calls callCounter
	proxy := testenv.StartProxy(t, srv.Addr, testenv.ProxyFaults{OnCall: calls.add})
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("serve", "http://"+proxy, true))
	local := t.TempDir()
	refs := bst1Artifacts(t, local, "proj/rotated-%d/key", 2, 4, 4<<10, 0, 3)
	if _, stderr, code := runJSON(t, append([]string{"--config", cfg, "--local", local, "push"}, refs...)...); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, stderr)
	}
	// testenv's readiness probe (a GetCapabilities that names no tool,
	// not through the proxy) is the log's first line.
	before := calls.total()
	waitLines(t, before+1, logPath)
	rotated := logPath + ".1"
	if err := os.Rename(logPath, rotated); err != nil {
		t.Fatal(err)
	}
	if err := srv.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(logPath); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new access log 10 s after SIGHUP\n%s", srv.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, stderr, code := runJSON(t, append([]string{"--config", cfg, "--local", t.TempDir(), "pull"}, refs...)...); code != 0 {
		t.Fatalf("pull: exit %d\n%s", code, stderr)
	}
	logs := waitLines(t, calls.total()+1, rotated, logPath)
	old, cur := logs[0], logs[1]
	if len(old) == 0 || old[0].Tool != "" || !strings.HasSuffix(old[0].Method, "/GetCapabilities") {
		t.Fatalf("the first line is not testenv's readiness probe: %+v", old)
	}
	old = old[1:]
	if len(old) != before || len(cur) != calls.total()-before {
		t.Fatalf("rotated log %d lines (want %d, the push's calls), new log %d lines (want %d, the pull's)\n%s", len(old), before, len(cur), calls.total()-before, srv.Log())
	}
	if diff := cmp.Diff(calls.counts(), byMethod(old, cur)); diff != "" {
		t.Errorf("lines per method (-proxy +logs):\n%s", diff)
	}
	if srv.Signal(syscall.Signal(0)) != nil {
		t.Fatal("SIGHUP stopped serve")
	}
}
