//go:build race

package remotes_test

// raceEnabled: under the race detector, sync.Pool drops what is put back
// at random, so pooled memory (gRPC's, zstd's) is made anew: allocation
// bounds do not hold.
const raceEnabled = true
