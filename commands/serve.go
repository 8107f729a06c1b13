package commands

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/tokenfile"
	"github.com/bst-cache/bst-cache/internal/words"
	"github.com/bst-cache/bst-cache/metrics"
	"github.com/bst-cache/bst-cache/server"
	"github.com/bst-cache/bst-cache/transfer"
)

// defaultListen is loopback only: serving other hosts is an explicit choice.
const defaultListen = "127.0.0.1:11001"

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "serve a store to BuildStream 1 and 2 clients (REAPI CAS, ByteStream, Remote Asset, ReferenceStorage)",
		ArgsUsage: "[DIR]",
		Description: "Serves DIR (default: the configured local store) over gRPC. A directory that\n" +
			"bst-artifact-server filled is served as it is. Takes bst-artifact-server's flags,\n" +
			"so it drops in where that ran: --port N listens on every interface, as it did.\n" +
			"Without --port, it listens on --listen, loopback by default. With --upstream NAME\n" +
			"it is a read-through mirror of those configured caches. With --replicate-to NAME\n" +
			"every artifact and source clients write is forwarded to those caches, blobs first,\n" +
			"through a journal in DIR/replication: a cache that is down catches up when it is back.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Usage: "address to listen on (HOST:PORT); another interface than loopback is an explicit choice", DefaultText: defaultListen},
			&cli.IntFlag{Name: "port", Usage: "port to listen on, on every interface, as bst-artifact-server does (--listen 127.0.0.1:N for loopback only)"},
			&cli.BoolFlag{Name: "enable-push", Usage: "accept writes (without it every write is PERMISSION_DENIED)"},
			&cli.StringFlag{Name: "server-key", Usage: "TLS private key (PEM)", TakesFile: true},
			&cli.StringFlag{Name: "server-cert", Usage: "TLS certificate (PEM)", TakesFile: true},
			&cli.StringFlag{Name: "client-certs", Usage: "require client certificates signed by (or equal to) these certificates (PEM)", TakesFile: true},
			&cli.StringFlag{Name: "access-token", Usage: "require 'authorization: Bearer TOKEN' with the token in this file (read again when it changes: the old token stops working)", TakesFile: true},
			&cli.StringFlag{Name: "access-log", Usage: "write one JSON line per call to this file ('-': standard output); reopened on SIGHUP", TakesFile: true},
			&cli.StringFlag{Name: "quota", Usage: "keep objects under SIZE (e.g. 50G, 500MiB), evicting least recently used refs"},
			&cli.IntFlag{Name: "max-message-bytes", Value: server.DefaultMaxMessageBytes, Usage: "gRPC message size limit; batch calls are limited to fit"},
			&cli.StringSliceFlag{Name: "instance-name", Usage: "instance name to serve (repeatable); all share the one store (default: only the empty name)"},
			&cli.StringSliceFlag{Name: "upstream", Usage: "on a local miss, fill the store from this configured cache (repeatable, in priority order): a read-through mirror"},
			&cli.StringSliceFlag{Name: "replicate-to", Usage: "forward every artifact and source clients write to this configured cache (repeatable), through a journal in DIR/replication that survives restarts"},
			&cli.IntFlag{Name: "replicate-journal", Value: transfer.DefaultJournalBound, Usage: "most refs the journal holds per --replicate-to cache; past it the oldest are dropped, with a warning (a `bst-cache sync` recovers them)"},
			&cli.StringFlag{Name: "replicate-policy", Value: "any", Usage: "when a client's write succeeds: 'any' once stored and journaled here, 'all' once every --replicate-to cache took it too"},
			&cli.StringFlag{Name: "metrics-listen", Usage: "serve Prometheus metrics at /metrics and the health check at /healthz over HTTP on this address (HOST:PORT)"},
			&cli.DurationFlag{Name: "grace", Value: 10 * time.Second, Usage: "on SIGINT/SIGTERM, how long in-flight calls may take to finish"},
		},
		Action: runServe,
	}
}

func runServe(c *cli.Context) error {
	e, err := newEnv(c)
	if err != nil {
		return err
	}
	if c.NArg() > 1 {
		return usageError("serve takes at most one DIR")
	}
	port := -1
	if c.IsSet("port") {
		port = c.Int("port")
	}
	listen, err := listenAddress(port, c.String("listen"))
	if err != nil {
		return err
	}
	var quota int64
	if q := c.String("quota"); q != "" {
		if quota, err = config.ParseSize(q); err != nil || quota <= 0 {
			return usageError("--quota %q: want a positive size such as 50G or 500MiB", q)
		}
	}
	tlsConfig, err := serverTLS(c.String("server-key"), c.String("server-cert"), c.String("client-certs"))
	if err != nil {
		return err
	}
	logf := func(format string, args ...any) { fmt.Fprintf(e.stderr, "bst-cache serve: "+format+"\n", args...) }
	var token *tokenfile.File
	if f := c.String("access-token"); f != "" {
		if token, err = tokenfile.Open(f, tokenfile.WithOnError(func(err error) { logf("--access-token: %v", err) })); err != nil {
			return fmt.Errorf("--access-token: %w", err)
		}
	}

	dir := e.cfg.Local
	if c.NArg() == 1 {
		if dir, err = filepath.Abs(expandHome(c.Args().First())); err != nil {
			return err
		}
	}
	// An existing directory keeps its layout; a new one gets the format's,
	// else that of the first artifact a client asks about or writes.
	store, err := cache.Open(dir, e.cfg.Format)
	if err != nil {
		return err
	}
	mirror, err := upstreams(c, e, store, quota, logf)
	if err != nil {
		return err
	}
	opts := server.Options{
		Store: store, AllowWrites: c.Bool("enable-push"), InstanceNames: c.StringSlice("instance-name"),
		Quota: quota, MaxMessageBytes: c.Int("max-message-bytes"), Logf: logf,
	}
	if mirror != nil {
		opts.Upstream = mirror
		defer closeUpstreams(e, mirror, logf)
	}
	repl, err := replicas(c, e, store, logf)
	if err != nil {
		return err
	}
	if repl != nil {
		opts.Replicator = repl
		defer closeReplicas(e, repl, logf)
	}
	srv, err := server.New(opts)
	if err != nil {
		return err
	}
	defer srv.Close()
	health := server.NewHealth(srv, 0)
	defer health.Close()
	gopts := server.GRPCOptions{TLS: tlsConfig, Token: token, MaxMessageBytes: c.Int("max-message-bytes"), Health: health}
	if e.verbose {
		gopts.OnCall = append(gopts.OnCall, func(call *server.Call) { logf("%s", server.CallLine(call)) })
	}
	if path := c.String("access-log"); path != "" {
		alog, err := server.OpenAccessLog(path)
		if err != nil {
			return err
		}
		defer func() {
			if err := alog.Close(); err != nil {
				logf("%v", err)
			}
		}()
		gopts.OnCall = append(gopts.OnCall, alog.Log)
		stop := reopenOnHangup(alog, logf)
		defer stop()
	}
	var m *metrics.Metrics
	if c.String("metrics-listen") != "" {
		m = metrics.New()
		gopts.OnCall = append(gopts.OnCall, m.ObserveCall)
	}
	g := server.NewGRPC(srv, gopts)

	l, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", listen, err)
	}
	if m != nil {
		m.WatchGRPC(g)
		m.WatchServer(srv, health)
		if mirror != nil {
			m.WatchUpstreams(mirror.Upstreams())
		}
		if repl != nil {
			m.WatchReplicator(repl)
		}
		stop, err := serveMetrics(c.String("metrics-listen"), m.NewHTTPServer(health), logf, e.quiet)
		if err != nil {
			return err
		}
		defer stop()
	}
	if !e.quiet {
		where := l.Addr().String()
		if !isLoopback(l.Addr()) {
			where += " (every interface: other hosts can connect)"
		}
		layout := store.Layout().Format() + " layout"
		if store.Layout() == cache.KindArtifact {
			layout = "new: the layout of the first artifact written"
		}
		logf("serving %s (%s) on %s%s", dir, layout, where, describeServe(c, tlsConfig != nil, token != nil, quota))
		if mirror != nil {
			logf("mirroring %s: a local miss is filled from there", describeUpstreams(mirror.Upstreams(), ", then "))
			go func() {
				// Each upstream that fails says so through the mirror's
				// warnings; those that answer are named here.
				for i, err := range mirror.Probe(c.Context) {
					if u := mirror.Upstreams()[i]; err == nil {
						logf("upstream %s (%s) answers", u.Name(), u.Config.URL)
					}
				}
			}()
		}
	}
	if repl != nil && !e.quiet {
		logf("replicating writes to %s (policy %s), journaled in %s", describeUpstreams(repl.Replicas(), ", "), c.String("replicate-policy"), replicationDir(dir))
		for _, st := range repl.Stats() {
			if st.Queued > 0 {
				logf("replica %s: %s left in the journal by the last run, replaying", st.Name, words.Plural(st.Queued, "ref"))
			}
		}
	}
	if openPush(l.Addr(), c.Bool("enable-push"), c.String("client-certs") != "", token != nil) {
		logf("warning: anyone who can reach %s can push: add --client-certs or --access-token", l.Addr())
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve(l) }()
	select {
	case err := <-served:
		return fmt.Errorf("serving on %s: %w", listen, err)
	case <-c.Context.Done():
	}
	if !e.quiet {
		logf("stopping: finishing calls in flight (up to %s)", c.Duration("grace"))
	}
	health.Close() // NOT_SERVING from now: load balancers turn away
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(c.Duration("grace")):
		logf("grace period over: cancelling the calls still running")
		g.Stop()
	}
	return nil
}

// serveMetrics serves the metrics listener hs on addr; stop closes it.
func serveMetrics(addr string, hs *http.Server, logf func(string, ...any), quiet bool) (stop func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	go hs.Serve(l)
	if !quiet {
		where := l.Addr().String()
		if !isLoopback(l.Addr()) {
			where += " (every interface: other hosts can read them)"
		}
		logf("metrics at http://%s/metrics, health at /healthz", where)
	}
	return func() { hs.Close() }, nil
}

// namedCaches are the configured caches a repeatable flag names, in the
// order given.
func namedCaches(c *cli.Context, e *env, flag string) ([]config.Cache, error) {
	var cfgs []config.Cache
	for _, n := range c.StringSlice(flag) {
		cc, ok := e.cfg.Cache(n)
		if !ok {
			return nil, fmt.Errorf("--%s: %w", flag, noCache(e.cfg, n))
		}
		if !cc.Type.HasStorage() && !cc.Type.HasIndex() {
			return nil, usageError("--%s %s: the cache has neither storage nor an index", flag, n)
		}
		cfgs = append(cfgs, *cc)
	}
	return cfgs, nil
}

// upstreams builds the mirror for --upstream: the named caches, in the
// order given, filling store. nil without --upstream.
func upstreams(c *cli.Context, e *env, store *cache.Store, quota int64, logf func(string, ...any)) (*transfer.Mirror, error) {
	cfgs, err := namedCaches(c, e, "upstream")
	if err != nil || len(cfgs) == 0 {
		return nil, err
	}
	ev := transfer.Events{OnWarn: func(msg string) { logf("upstream: %s", msg) }}
	if e.verbose {
		ev.OnInfo = func(msg string) { logf("upstream: %s", msg) }
	}
	return transfer.NewMirror(store, transfer.NewCaches(cfgs, e.cfg.Bwlimit), transfer.MirrorOptions{Jobs: e.cfg.Jobs, Keep: quota, Events: ev}), nil
}

// replicationDir holds the replication journals of the store in dir.
func replicationDir(dir string) string { return filepath.Join(dir, "replication") }

// replicas builds the replicator for --replicate-to: the named caches get
// every BuildStream entry clients write to store. nil without
// --replicate-to.
func replicas(c *cli.Context, e *env, store *cache.Store, logf func(string, ...any)) (*transfer.Replicator, error) {
	policy := c.String("replicate-policy")
	if policy != "any" && policy != "all" {
		return nil, usageError("--replicate-policy %q: want any or all", policy)
	}
	bound := c.Int("replicate-journal")
	if bound <= 0 {
		return nil, usageError("--replicate-journal %d: want a positive number of refs", bound)
	}
	cfgs, err := namedCaches(c, e, "replicate-to")
	if err != nil || len(cfgs) == 0 {
		return nil, err
	}
	if !c.Bool("enable-push") {
		return nil, usageError("--replicate-to forwards what clients write: it needs --enable-push")
	}
	ev := transfer.Events{OnWarn: func(msg string) { logf("replication: %s", msg) }}
	if e.verbose {
		ev.OnInfo = func(msg string) { logf("replication: %s", msg) }
	}
	return transfer.NewReplicator(store, transfer.NewCaches(cfgs, e.cfg.Bwlimit), transfer.ReplicatorOptions{
		Dir: replicationDir(store.Root()), All: policy == "all", Jobs: e.cfg.Jobs, Bound: bound, Events: ev,
	})
}

// closeReplicas stops replication and says, per replica, what it did and
// what its journal still holds for the next run.
func closeReplicas(e *env, r *transfer.Replicator, logf func(string, ...any)) {
	r.Close()
	if e.quiet {
		return
	}
	for _, st := range r.Stats() {
		if st.Queued > 0 {
			logf("%s: the next start replays the journal", st)
		} else {
			logf("%s", st)
		}
	}
}

// describeUpstreams names caches and their URLs, joined by sep.
func describeUpstreams(caches []*transfer.Cache, sep string) string {
	var parts []string
	for _, u := range caches {
		parts = append(parts, fmt.Sprintf("%s (%s)", u.Name(), u.Config.URL))
	}
	return strings.Join(parts, sep)
}

// closeUpstreams closes the upstreams' connections and says, per
// upstream, what it served.
func closeUpstreams(e *env, m *transfer.Mirror, logf func(string, ...any)) {
	for _, u := range m.Upstreams() {
		if !e.quiet {
			use := u.Usage()
			logf("upstream %s (%s): %s, %s, %s, %s in %s", u.Name(), u.Config.URL,
				words.Plural(use.Hits, "hit"), words.Plural(use.Misses, "miss"), words.Plural(use.Errors, "error"),
				humanBytes(use.Bytes), words.Plural(use.Blobs, "blob"))
		}
	}
	transfer.Close(m.Upstreams())
}

// describeServe summarizes the settings for the start-up line.
func describeServe(c *cli.Context, tls, token bool, quota int64) string {
	var parts []string
	if c.Bool("enable-push") {
		parts = append(parts, "pushes enabled")
	} else {
		parts = append(parts, "read-only")
	}
	if tls {
		parts = append(parts, "TLS")
	}
	if c.String("client-certs") != "" {
		parts = append(parts, "client certificates required")
	}
	if token {
		parts = append(parts, "access token required")
	}
	if quota > 0 {
		parts = append(parts, "quota "+humanBytes(quota)+", enforced once the store is measured (in the background)")
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// serverTLS builds the TLS configuration from bst-artifact-server's flags.
func serverTLS(keyFile, certFile, clientCerts string) (*tls.Config, error) {
	if keyFile == "" && certFile == "" {
		if clientCerts != "" {
			return nil, usageError("--client-certs needs --server-key and --server-cert")
		}
		return nil, nil
	}
	if keyFile == "" || certFile == "" {
		return nil, usageError("--server-key and --server-cert go together")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading --server-cert %s and --server-key %s: %w", certFile, keyFile, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCerts != "" {
		pem, err := os.ReadFile(clientCerts)
		if err != nil {
			return nil, fmt.Errorf("--client-certs: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--client-certs %s: no PEM certificates in it", clientCerts)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// reopenOnHangup reopens the access log on each SIGHUP, as logrotate
// expects after it renamed the file. The returned function stops it.
func reopenOnHangup(alog *server.AccessLog, logf func(string, ...any)) func() {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-hup:
				if err := alog.Reopen(); err != nil {
					logf("access log: %v", err)
				}
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(hup); close(done) }
}

// isLoopback says whether an address is reachable from this host only.
func isLoopback(a net.Addr) bool {
	tcp, ok := a.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// listenAddress is where serve listens: --port N on every interface, as
// bst-artifact-server did (port < 0 when not given), else --listen, else
// loopback.
func listenAddress(port int, listen string) (string, error) {
	switch {
	case port >= 0 && listen != "":
		return "", usageError("give --listen or --port, not both")
	case port > 65535:
		return "", usageError("--port %d is not a port number", port)
	case port >= 0:
		return net.JoinHostPort("", strconv.Itoa(port)), nil
	case listen == "":
		return defaultListen, nil
	}
	return listen, nil
}

// openPush says whether anyone who reaches the address could push: writes
// enabled on an address other hosts reach, with neither client
// certificates nor a token required.
func openPush(addr net.Addr, push, clientCerts, token bool) bool {
	return push && !isLoopback(addr) && !clientCerts && !token
}
