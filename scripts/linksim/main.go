// Command linksim puts a simulated network path between clients and a
// server on loopback, for scripts/bench-links: a one-way delay on every
// byte and one rate shared by all connections in each direction.
//
//	linksim -backend 127.0.0.1:PORT -profile site   # 20 ms, 200 Mbit/s
//	linksim -backend 127.0.0.1:PORT -delay 10ms -rate 100Mbit
//
// It prints the address it listens on (127.0.0.1, a free port unless
// -listen says) and runs until SIGTERM or SIGINT, when it prints the bytes
// that crossed each way ("bytes up N down M").
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/linksim"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (loopback only)")
	backend := flag.String("backend", "", "server address, host:port")
	profile := flag.String("profile", "", "lan, site or wan")
	delay := flag.Duration("delay", 0, "one-way delay (instead of -profile)")
	rate := flag.String("rate", "", "rate, e.g. 200Mbit or 25MB/s (instead of -profile)")
	flag.Parse()
	if err := run(*listen, *backend, *profile, *delay, *rate); err != nil {
		fmt.Fprintln(os.Stderr, "linksim:", err)
		os.Exit(1)
	}
}

func run(listen, backend, profile string, delay time.Duration, rate string) error {
	if backend == "" {
		return fmt.Errorf("-backend is required")
	}
	p, ok := linksim.Profiles[profile]
	if profile != "" && !ok {
		var names []string
		for n := range linksim.Profiles {
			names = append(names, n)
		}
		sort.Strings(names)
		return fmt.Errorf("no profile %q (the profiles: %s)", profile, strings.Join(names, ", "))
	}
	if profile == "" {
		r, err := config.ParseRate(rate)
		if err != nil {
			return err
		}
		p = linksim.Profile{Delay: delay, Rate: float64(r)}
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		return fmt.Errorf("-listen %s: loopback addresses only", listen)
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	fmt.Println(l.Addr())
	link := linksim.New(backend, p)
	// On SIGTERM or SIGINT it says what crossed, for the benchmark's
	// report, and stops.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		up, down := link.Bytes()
		fmt.Printf("bytes up %d down %d\n", up, down)
		l.Close()
	}()
	return link.Serve(l)
}
