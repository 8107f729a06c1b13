// Package linksim simulates one network path between clients and a
// server on loopback, for benchmarks: every byte waits a one-way delay,
// and the bytes of all connections share one rate in each direction, as
// they would on one link. It is a TCP proxy; it never listens beyond
// 127.0.0.1.
//
// Contracts: bytes arrive in order and unchanged; a chunk leaves the link
// no earlier than its serialization at the shared rate allows and arrives
// one delay later; each connection holds at most QueueBytes in flight in
// each direction (a router's buffer), so a fast sender waits as it would
// on TCP's window. Closing a side closes the other after what is in
// flight is delivered.
package linksim
