package remotes

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bst-cache/bst-cache/config"
)

// helperScript writes an executable helper that counts its runs in a
// file and prints out.
func helperScript(t *testing.T, out string) (*helperCreds, func() int) {
	t.Helper()
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	path := filepath.Join(dir, "helper")
	script := fmt.Sprintf("#!/bin/bash\necho >> %s\ncat > /dev/null\ncat <<'EOF'\n%s\nEOF\n", runs, out)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	h := &helperCreds{cache: "c", path: path, uri: helperURI(config.Cache{Endpoint: config.Endpoint{Target: "h:1", TLS: true}, InstanceName: "i"})}
	return h, func() int {
		raw, _ := os.ReadFile(runs)
		return strings.Count(string(raw), "\n")
	}
}

// Headers are lower-cased, values joined; kept until shortly before
// "expires" (without one, for the run), then fetched again; a refusal
// fetches them again unless a run came after the refused call began.
func TestHelperCaching(t *testing.T) {
	ctx := context.Background()
	h, runs := helperScript(t, `{"headers": {"Authorization": ["Bearer a"], "X-Extra": ["1", "2"]}}`)
	for range 3 {
		md, err := h.GetRequestMetadata(ctx)
		if err != nil || md["authorization"] != "Bearer a" || md["x-extra"] != "1, 2" || len(md) != 2 {
			t.Fatalf("headers %v, %v", md, err)
		}
	}
	if runs() != 1 {
		t.Fatalf("no expires: ran %d times for 3 calls, want 1", runs())
	}
	began := time.Now()
	if !h.refresh(ctx, began) || runs() != 2 {
		t.Fatalf("a refusal: ran %d times, want 2", runs())
	}
	if !h.refresh(ctx, began) || runs() != 2 {
		t.Fatalf("a second refusal of a call begun before the last run: ran %d times, want 2", runs())
	}

	exp := time.Now().Add(1500 * time.Millisecond).UTC().Format(time.RFC3339Nano)
	h, runs = helperScript(t, fmt.Sprintf(`{"headers": {"authorization": ["Bearer b"]}, "expires": %q}`, exp))
	h.GetRequestMetadata(ctx)
	h.GetRequestMetadata(ctx)
	if runs() != 1 {
		t.Fatalf("before expiry: ran %d times, want 1", runs())
	}
	time.Sleep(1600 * time.Millisecond)
	h.GetRequestMetadata(ctx)
	if runs() != 2 {
		t.Fatalf("after expiry: ran %d times, want 2", runs())
	}
}

// Output the protocol does not allow is an error that quotes none of it.
func TestHelperBadOutput(t *testing.T) {
	for name, out := range map[string]string{
		"too large":     `{"headers": {"authorization": ["Bearer ` + strings.Repeat("S", helperMaxOutput) + `"]}}`,
		"bad header":    `{"headers": {"bad header": ["SECRET"]}}`,
		"binary header": `{"headers": {"x-bin": ["SECRET"]}}`,
		"bad value":     `{"headers": {"authorization": ["SECRET\u0001"]}}`,
		"bad expires":   `{"headers": {"authorization": ["SECRET"]}, "expires": "tomorrow"}`,
		"not json":      `SECRET`,
	} {
		h, _ := helperScript(t, out)
		_, err := h.GetRequestMetadata(context.Background())
		if err == nil || strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "SSSS") || !strings.Contains(err.Error(), h.path) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
