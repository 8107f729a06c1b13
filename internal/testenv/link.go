package testenv

import (
	"net"
	"testing"

	"github.com/bst-cache/bst-cache/internal/linksim"
)

// StartLink puts a simulated link with profile p in front of backend
// (host:port) on 127.0.0.1 and returns it with its address; a zero
// profile only counts the bytes that cross it.
func StartLink(t testing.TB, backend string, p linksim.Profile) (*linksim.Link, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	k := linksim.New(backend, p)
	go k.Serve(l)
	return k, l.Addr().String()
}
