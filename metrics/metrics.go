package metrics

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/bst-cache/bst-cache/server"
	"github.com/bst-cache/bst-cache/transfer"
)

// other labels a gRPC service or method the server did not register.
const other = "other"

// latencyBuckets span a quick FindMissingBlobs to a long ByteStream read:
// 1 ms to about a minute, by fours.
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 4, 9)

// Metrics is one serve process's registry.
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	// methods are the gRPC methods served, by full name: the only method
	// labels there are, besides other.
	methods map[string][2]string
}

// New makes a registry with the Go runtime's and the process's
// collectors, and the per-call series, fed by ObserveCall.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bst_cache_grpc_requests_total",
			Help: "gRPC calls ended, by service, method and status code.",
		}, []string{"service", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bst_cache_grpc_request_duration_seconds",
			Help:    "How long gRPC calls took, from the call's start to its status, by service and method.",
			Buckets: latencyBuckets,
		}, []string{"service", "method"}),
		methods: map[string][2]string{},
	}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.requests, m.latency)
	return m
}

// WatchGRPC names the methods g serves, the only method labels besides
// "other". Call it once every service is registered, before g serves.
func (m *Metrics) WatchGRPC(g *grpc.Server) {
	for svc, info := range g.GetServiceInfo() {
		for _, mi := range info.Methods {
			m.methods["/"+svc+"/"+mi.Name] = [2]string{svc, mi.Name}
			m.latency.WithLabelValues(svc, mi.Name) // present from the start, at 0
		}
	}
}

// ObserveCall counts a call that ended: a server.GRPCOptions.OnCall hook.
func (m *Metrics) ObserveCall(c *server.Call) {
	sm, ok := m.methods[c.Method]
	if !ok {
		sm = [2]string{other, other}
	}
	m.requests.WithLabelValues(sm[0], sm[1], c.Code.String()).Inc()
	m.latency.WithLabelValues(sm[0], sm[1]).Observe(c.Duration.Seconds())
}

// WatchServer exports s's counters (hits and misses, bytes, uploads, the
// quota's account) and health h (when not nil), read at each scrape.
func (m *Metrics) WatchServer(s *server.Server, h *server.Health) {
	m.reg.MustRegister(&serverCollector{s: s})
	if h != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bst_cache_serving",
			Help: "1 while the health check says SERVING (the store readable, and writable for a server with --enable-push, and the quota can take writes), else 0.",
		}, func() float64 { return boolValue(h.Status() == nil) }))
	}
}

// WatchUpstreams exports the counters of a mirror's upstreams (serve
// --upstream), labelled with their configured names.
func (m *Metrics) WatchUpstreams(caches []*transfer.Cache) {
	m.reg.MustRegister(&upstreamCollector{caches: caches})
}

// WatchReplicator exports the counters of each replica (serve
// --replicate-to), labelled with their configured names.
func (m *Metrics) WatchReplicator(r *transfer.Replicator) {
	m.reg.MustRegister(&replicaCollector{r: r})
}

// Handler serves /metrics and, with h, /healthz.
func (m *Metrics) Handler(h *server.Health) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	if h != nil {
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			if err := h.Status(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "NOT_SERVING\n%s\n", strings.TrimSpace(err.Error()))
				return
			}
			fmt.Fprintln(w, "SERVING")
		})
	}
	return mux
}

// NewHTTPServer is the metrics listener's HTTP server for Handler(h),
// with timeouts so that a slow client cannot hold it.
func (m *Metrics) NewHTTPServer(h *server.Health) *http.Server {
	return &http.Server{Handler: m.Handler(h), ReadHeaderTimeout: 10 * time.Second, WriteTimeout: time.Minute}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// desc describes one series.
func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// describe sends every Desc of a collector whose Collect sends const
// metrics of those Descs.
func describe(ch chan<- *prometheus.Desc, ds ...*prometheus.Desc) {
	for _, d := range ds {
		ch <- d
	}
}

var (
	hitsDesc       = desc("bst_cache_hits_total", "Lookups answered from the store (or filled from an upstream), by what was asked: blob, bst1_ref, bst2_artifact, source, asset.", "kind")
	missesDesc     = desc("bst_cache_misses_total", "Lookups answered NOT_FOUND, by what was asked: blob, bst1_ref, bst2_artifact, source, asset.", "kind")
	blobBytesDesc  = desc("bst_cache_blob_bytes_total", "Blob content bytes received (in) and sent (out), by the encoding on the wire (identity, zstd).", "direction", "encoding")
	wireBytesDesc  = desc("bst_cache_wire_bytes_total", "Bytes on the wire for those blobs: the compressed size for zstd.", "direction", "encoding")
	uploadsDesc    = desc("bst_cache_uploads", "ByteStream uploads in progress: active (a stream writing) and parked (interrupted, kept for a resume).", "state")
	parkedDesc     = desc("bst_cache_uploads_parked_bytes", "Bytes held by parked uploads.")
	builtDesc      = desc("bst_cache_store_account_built", "1 once the quota's account of the store (built in the background at start-up) is complete and the quota enforced, else 0.")
	quotaDesc      = desc("bst_cache_store_quota_bytes", "The quota (serve --quota).")
	storeBytesDesc = desc("bst_cache_store_bytes", "Bytes of objects in the store, as the quota's account holds.")
	objectsDesc    = desc("bst_cache_store_objects", "Objects in the store, as the quota's account holds.")
	refsDesc       = desc("bst_cache_store_refs", "Refs in the store, as the quota's account holds.")
	evRefsDesc     = desc("bst_cache_store_evicted_refs_total", "Refs evicted by the quota.")
	evObjsDesc     = desc("bst_cache_store_evicted_objects_total", "Objects evicted by the quota.")
	evBytesDesc    = desc("bst_cache_store_evicted_bytes_total", "Bytes freed by eviction.")
	leasedDesc     = desc("bst_cache_store_leased_bytes", "Bytes kept from eviction by clients' leases: upload (objects uploaded that no ref names yet), read (refs given out, blobs read).", "lease")
	leaseCliDesc   = desc("bst_cache_store_lease_clients", "Client connections holding upload or read leases.")
	reservedDesc   = desc("bst_cache_store_reserved_bytes", "Bytes of uploads admitted and not yet stored: room kept for them under the quota's hard cap (not in bst_cache_store_bytes).")
	waitingDesc    = desc("bst_cache_store_waiting_bytes", "Bytes of uploads waiting for room under the quota's hard cap (admitted once eviction or clients make it, refused after a while).")
	removingDesc   = desc("bst_cache_store_removing_bytes", "Bytes of objects eviction took out of the account whose files it is still removing: on disk until then (not in bst_cache_store_bytes).")
)

// serverCollector reads a Server's Stats at each scrape.
type serverCollector struct{ s *server.Server }

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	describe(ch, hitsDesc, missesDesc, blobBytesDesc, wireBytesDesc, uploadsDesc, parkedDesc, builtDesc, quotaDesc,
		storeBytesDesc, objectsDesc, refsDesc, evRefsDesc, evObjsDesc, evBytesDesc, leasedDesc, leaseCliDesc, reservedDesc, waitingDesc, removingDesc)
}

func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	for _, l := range server.Lookups {
		counter(hitsDesc, st.Hits[l], l.String())
		counter(missesDesc, st.Misses[l], l.String())
	}
	for _, d := range server.Directions {
		for _, e := range server.Encodings {
			counter(blobBytesDesc, st.BlobBytes[d][e], d.String(), e.String())
			counter(wireBytesDesc, st.WireBytes[d][e], d.String(), e.String())
		}
	}
	gauge(uploadsDesc, int64(st.ActiveUploads), "active")
	gauge(uploadsDesc, int64(st.ParkedUploads), "parked")
	gauge(parkedDesc, st.ParkedBytes)
	q := st.Quota
	if q == nil {
		return // no account without a quota
	}
	gauge(builtDesc, int64(boolValue(q.Known)))
	gauge(quotaDesc, q.Limit)
	gauge(storeBytesDesc, q.Bytes)
	gauge(objectsDesc, q.Objects)
	gauge(refsDesc, q.Refs)
	counter(evRefsDesc, q.EvictedRefs)
	counter(evObjsDesc, q.EvictedObjects)
	counter(evBytesDesc, q.EvictedBytes)
	gauge(leasedDesc, q.UploadLeased, "upload")
	gauge(leasedDesc, q.ReadLeased, "read")
	gauge(leaseCliDesc, int64(q.LeaseClients))
	gauge(reservedDesc, q.Reserved)
	gauge(waitingDesc, q.Waiting)
	gauge(removingDesc, q.Removing)
}

var (
	upHitsDesc    = desc("bst_cache_upstream_hits_total", "Index lookups an upstream answered with the ref.", "upstream")
	upMissesDesc  = desc("bst_cache_upstream_misses_total", "Index lookups an upstream answered NOT_FOUND.", "upstream")
	upErrorsDesc  = desc("bst_cache_upstream_errors_total", "Calls to an upstream that failed (corrupt answers included).", "upstream")
	upCorruptDesc = desc("bst_cache_upstream_corrupt_total", "Answers from an upstream refused because their bytes did not match their digests.", "upstream")
	upBlobsDesc   = desc("bst_cache_upstream_received_blobs_total", "Blobs received from an upstream.", "upstream")
	upBytesDesc   = desc("bst_cache_upstream_received_bytes_total", "Bytes of blobs received from an upstream.", "upstream")
	upDownDesc    = desc("bst_cache_upstream_down", "1 while an upstream is skipped (its breaker open after a failure, until a probe finds it answers), else 0.", "upstream")
)

// upstreamCollector reads the upstreams' usage at each scrape.
type upstreamCollector struct{ caches []*transfer.Cache }

func (c *upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	describe(ch, upHitsDesc, upMissesDesc, upErrorsDesc, upCorruptDesc, upBlobsDesc, upBytesDesc, upDownDesc)
}

func (c *upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c.caches {
		use := u.Usage()
		for d, v := range map[*prometheus.Desc]int64{upHitsDesc: use.Hits, upMissesDesc: use.Misses, upErrorsDesc: use.Errors,
			upCorruptDesc: use.Corrupt, upBlobsDesc: use.Blobs, upBytesDesc: use.Bytes} {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), u.Name())
		}
		ch <- prometheus.MustNewConstMetric(upDownDesc, prometheus.GaugeValue, boolValue(u.Down()), u.Name())
	}
}

var (
	repDepthDesc   = desc("bst_cache_replica_journal_entries", "Entries queued in a replica's journal (waiting or moving).", "replica")
	repOldestDesc  = desc("bst_cache_replica_journal_oldest_age_seconds", "How long the oldest entry of a replica's journal has waited (0 when it is empty): the replica's lag.", "replica")
	repDoneDesc    = desc("bst_cache_replica_replicated_total", "Entries a replica took.", "replica")
	repFailedDesc  = desc("bst_cache_replica_failures_total", "Attempts to replicate entries that failed (retried from the journal).", "replica")
	repDroppedDesc = desc("bst_cache_replica_dropped_total", "Entries dropped from a full journal (the oldest first).", "replica")
	repErrorsDesc  = desc("bst_cache_replica_errors_total", "Calls to a replica that failed.", "replica")
	repBlobsDesc   = desc("bst_cache_replica_sent_blobs_total", "Blobs sent to a replica.", "replica")
	repBytesDesc   = desc("bst_cache_replica_sent_bytes_total", "Bytes of blobs sent to a replica.", "replica")
	repLagDesc     = desc("bst_cache_replica_last_lag_seconds", "How long the last entry a replica took waited for it, from the client's write (0 before the first).", "replica")
	repDownDesc    = desc("bst_cache_replica_down", "1 while a replica is skipped (its breaker open after a failure, until a probe finds it answers), else 0.", "replica")
)

// replicaCollector reads the replicator's stats at each scrape.
type replicaCollector struct{ r *transfer.Replicator }

func (c *replicaCollector) Describe(ch chan<- *prometheus.Desc) {
	describe(ch, repDepthDesc, repOldestDesc, repDoneDesc, repFailedDesc, repDroppedDesc, repErrorsDesc, repBlobsDesc, repBytesDesc, repLagDesc, repDownDesc)
}

func (c *replicaCollector) Collect(ch chan<- prometheus.Metric) {
	caches := c.r.Replicas()
	now := time.Now()
	for i, st := range c.r.Stats() {
		age := 0.0
		if !st.Oldest.IsZero() {
			age = now.Sub(st.Oldest).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(repDepthDesc, prometheus.GaugeValue, float64(st.Queued), st.Name)
		ch <- prometheus.MustNewConstMetric(repOldestDesc, prometheus.GaugeValue, age, st.Name)
		ch <- prometheus.MustNewConstMetric(repLagDesc, prometheus.GaugeValue, st.Lag.Seconds(), st.Name)
		ch <- prometheus.MustNewConstMetric(repDownDesc, prometheus.GaugeValue, boolValue(caches[i].Down()), st.Name)
		for d, v := range map[*prometheus.Desc]int64{repDoneDesc: st.Done, repFailedDesc: st.Failed, repDroppedDesc: st.Dropped,
			repErrorsDesc: caches[i].Usage().Errors, repBlobsDesc: st.Blobs, repBytesDesc: st.Bytes} {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), st.Name)
		}
	}
}
