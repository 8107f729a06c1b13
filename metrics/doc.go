// Package metrics exports a `bst-cache serve` process's counters to
// Prometheus (github.com/prometheus/client_golang) and serves them, with
// the server's health, over HTTP: `serve --metrics-listen ADDR` answers
// /metrics (Prometheus text) and /healthz (200 "SERVING" or 503
// "NOT_SERVING" and why, as grpc.health.v1.Health says on the serving
// port).
//
// Its contracts:
//   - Each Metrics has a registry of its own (never Prometheus's global
//     one), so several servers in one process, and tests, stay apart. It
//     holds the Go runtime's and the process's collectors too.
//   - Counters live with the block that counts (server.Server.Stats,
//     transfer.Cache.Usage, transfer.Replicator.Stats) and are read when
//     Prometheus scrapes: nothing is counted twice. The only series this
//     package keeps itself are per call: requests by method and status
//     code, and latency, from the server's OnCall hook.
//   - Labels come from fixed sets (gRPC methods the server registered,
//     "other" for any other; status codes; what was asked; directions and
//     encodings) and from configured names (upstreams, replicas), never
//     from digests, refs, instance names or peers: the number of series
//     is bounded whatever clients send.
//   - A Metrics is safe for concurrent use.
//
// The series, their labels and meaning are listed in the README's section
// for admins, with the recording rule for the artifact hit ratio.
package metrics
