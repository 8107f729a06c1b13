package commands

import (
	"net"
	"testing"
)

// --port listens on every interface, as bst-artifact-server did; --listen
// is the explicit form, loopback by default; writes open to other hosts
// without client certificates or a token are warned about.
func TestServeAddress(t *testing.T) {
	for _, c := range []struct {
		port   int
		listen string
		want   string
		bad    bool
	}{
		{-1, "", "127.0.0.1:11001", false},
		{11002, "", ":11002", false},
		{-1, "10.0.0.1:5", "10.0.0.1:5", false},
		{5, "127.0.0.1:5", "", true},
		{70000, "", "", true},
	} {
		got, err := listenAddress(c.port, c.listen)
		if got != c.want || (err != nil) != c.bad {
			t.Errorf("listenAddress(%d, %q) = %q, %v", c.port, c.listen, got, err)
		}
	}
	every := &net.TCPAddr{IP: net.IPv4zero, Port: 11001}
	loop := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 11001}
	for _, c := range []struct {
		addr                     net.Addr
		push, clientCerts, token bool
		warn                     bool
	}{
		{every, true, false, false, true},
		{every, true, true, false, false},
		{every, true, false, true, false},
		{every, false, false, false, false},
		{loop, true, false, false, false},
	} {
		if got := openPush(c.addr, c.push, c.clientCerts, c.token); got != c.warn {
			t.Errorf("openPush(%v, push=%t, certs=%t, token=%t) = %t", c.addr, c.push, c.clientCerts, c.token, got)
		}
	}
}
