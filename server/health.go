package server

import (
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// DefaultHealthInterval is how often Health checks the store.
const DefaultHealthInterval = time.Second

// Health is a server's health, checked every interval and told to gRPC's
// health service (grpc.health.v1.Health, registered through
// GRPCOptions.Health) for the overall service "" and each service the
// server registers. It is SERVING when the store can be read, and, for a
// server that accepts writes, written (cache.Store.Probe) and the quota
// can take a write (under its hard cap, or eviction can make room);
// NOT_SERVING otherwise, from the first check that finds it so. Status
// says the same for HTTP (the metrics listener's /healthz).
//
// A Health is safe for concurrent use; Close stops its checks.
type Health struct {
	s    *Server
	hs   *health.Server
	quit chan struct{}
	done chan struct{}

	mu       sync.Mutex
	err      error // why not serving; nil when serving
	services []string
}

// NewHealth checks s once and then every interval (DefaultHealthInterval
// when zero or less) until Close.
func NewHealth(s *Server, interval time.Duration) *Health {
	if interval <= 0 {
		interval = DefaultHealthInterval
	}
	h := &Health{s: s, hs: health.NewServer(), quit: make(chan struct{}), done: make(chan struct{})}
	h.check()
	go func() {
		defer close(h.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-h.quit:
				return
			case <-t.C:
				h.check()
			}
		}
	}()
	return h
}

// register adds the health service to g and names every service g has
// in it.
func (h *Health) register(g *grpc.Server) {
	healthpb.RegisterHealthServer(g, h.hs)
	h.mu.Lock()
	defer h.mu.Unlock()
	for name := range g.GetServiceInfo() {
		h.services = append(h.services, name)
	}
	h.publish()
}

// check probes the store and the quota and publishes the result when it
// changed.
func (h *Health) check() {
	err := h.s.store.Probe(h.s.allowWrites)
	if err == nil && h.s.allowWrites && h.s.quota != nil && !h.s.quota.writable(time.Now()) {
		err = errQuotaFull
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	changed := (err == nil) != (h.err == nil)
	h.err = err
	if !changed {
		return
	}
	if err != nil {
		h.s.logf("health: NOT_SERVING: %v", err)
	} else {
		h.s.logf("health: SERVING")
	}
	h.publish()
}

// errQuotaFull: the store is at its hard cap and leases hold everything.
var errQuotaFull = errorString("the quota is full and clients' leases hold every object: writes are refused")

type errorString string

func (e errorString) Error() string { return string(e) }

// publish tells the health service the status; h.mu is held.
func (h *Health) publish() {
	st := healthpb.HealthCheckResponse_SERVING
	if h.err != nil {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	h.hs.SetServingStatus("", st)
	for _, name := range h.services {
		h.hs.SetServingStatus(name, st)
	}
}

// Status says whether the server is serving, and if not, why.
func (h *Health) Status() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// Close stops the checks and answers NOT_SERVING from then on (the server
// is stopping).
func (h *Health) Close() {
	select {
	case <-h.quit:
		return
	default:
	}
	close(h.quit)
	<-h.done
	h.hs.Shutdown()
}
