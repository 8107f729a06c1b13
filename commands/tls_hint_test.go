package commands_test

import (
	"strings"
	"testing"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// http:// to a TLS server says to use https://.
func TestPlaintextToTLSSaysSo(t *testing.T) {
	certs := testenv.NewCerts(t)
	srv := testenv.StartServe(t, testenv.ServeOptions{ServerKey: certs.ServerKey, ServerCert: certs.ServerCert})
	cfg := writeConfig(t, "format = \"bst1\"\n"+cacheTOML("tls", "http://"+srv.Addr, false))
	_, stderr, code := runCLI(t, "", "--config", cfg, "--local", t.TempDir(), "pull", "demo/x/1")
	if code != 1 || !strings.Contains(stderr, "this server speaks TLS: use https://") {
		t.Errorf("pull over http:// from a TLS server: exit %d\n%s", code, stderr)
	}
}
