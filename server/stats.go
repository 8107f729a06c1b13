package server

import (
	"sync/atomic"

	"github.com/bst-cache/bst-cache/cache"
)

// Lookup is what a client asked for, for the hit and miss counters: a
// blob, or an index entry of one kind. Artifact hits are counted apart
// from blob hits: a pull that finds its artifact reads every blob of it,
// so blob ratios say little of how often builds were spared.
type Lookup int

const (
	// LookupBlob: a blob read (each BatchReadBlobs entry, each whole or
	// partial ByteStream Read).
	LookupBlob Lookup = iota
	// LookupBst1Ref: a BuildStream 1 artifact ref (GetReference, or
	// FetchDirectory of its URN).
	LookupBst1Ref
	// LookupBst2Artifact: a BuildStream 2 artifact (FetchBlob of its URN).
	LookupBst2Artifact
	// LookupSource: a BuildStream 2 source (FetchBlob of its URN).
	LookupSource
	// LookupAsset: any other Remote Asset fetch.
	LookupAsset
	numLookups
)

// Lookups are every Lookup, in order.
var Lookups = []Lookup{LookupBlob, LookupBst1Ref, LookupBst2Artifact, LookupSource, LookupAsset}

// String is the Lookup's name, as metrics label it.
func (l Lookup) String() string {
	return [...]string{"blob", "bst1_ref", "bst2_artifact", "source", "asset"}[l]
}

// lookupOf is the Lookup an index entry counts under.
func lookupOf(e entry) Lookup {
	switch e.kind {
	case cache.KindBst1Artifact:
		return LookupBst1Ref
	case cache.KindBst2Artifact:
		return LookupBst2Artifact
	case cache.KindSource:
		return LookupSource
	}
	return LookupAsset
}

// Encoding is how blob bytes crossed the wire.
type Encoding int

const (
	// Identity: as they are.
	Identity Encoding = iota
	// Zstd: compressed (compressed-blobs/zstd, or a zstd batch entry).
	Zstd
	numEncodings
)

// Encodings are every Encoding, in order.
var Encodings = []Encoding{Identity, Zstd}

// String is the Encoding's name, as metrics label it.
func (e Encoding) String() string { return [...]string{"identity", "zstd"}[e] }

// Direction says whether bytes came in (uploads) or went out (reads).
type Direction int

const (
	In Direction = iota
	Out
	numDirections
)

// Directions are both Directions, in order.
var Directions = []Direction{In, Out}

// String is the Direction's name, as metrics label it.
func (d Direction) String() string { return [...]string{"in", "out"}[d] }

// Stats are a server's counters since it started, and its state now.
type Stats struct {
	// Hits and Misses count lookups by what was asked. A lookup that
	// fails otherwise (a bad request, an internal error) is neither.
	Hits, Misses [numLookups]int64
	// BlobBytes are blob content bytes received and sent, by encoding on
	// the wire; WireBytes the bytes that crossed it for them (equal for
	// Identity; the compressed size for Zstd).
	BlobBytes, WireBytes [numDirections][numEncodings]int64
	// Uploads are the ByteStream uploads in progress: active (a stream
	// writing) and parked for a resume, and the bytes parked ones hold.
	ActiveUploads, ParkedUploads int
	ParkedBytes                  int64
	// Quota is the store's account; nil without a quota.
	Quota *QuotaStats
}

// QuotaStats are what the quota's account holds.
type QuotaStats struct {
	// Known: the start-up walk is done; until then the figures below are
	// what it found so far, and the quota is not enforced.
	Known bool
	// Limit is the quota in bytes; Bytes and Objects what the store holds.
	Limit, Bytes, Objects int64
	Refs                  int64
	// Evicted counts refs and objects evicted and the bytes freed.
	EvictedRefs, EvictedObjects, EvictedBytes int64
	// UploadLeased is the bytes of objects no ref names under an upload
	// lease, ReadLeased those under a read lease, held by LeaseClients.
	UploadLeased, ReadLeased int64
	LeaseClients             int
	// Reserved is the bytes of uploads admitted and not yet stored (their
	// room kept under the hard cap), Removing those of objects eviction
	// took out of the account whose files it is still removing (on disk
	// until then). Neither is in Bytes.
	Reserved, Removing int64
	// Waiting is the bytes of uploads waiting for room.
	Waiting int64
}

// counters are the server's own counters, updated as calls go.
type counters struct {
	hits, misses [numLookups]atomic.Int64
	blob, wire   [numDirections][numEncodings]atomic.Int64
}

// looked counts a lookup of l: a hit or a miss.
func (c *counters) looked(l Lookup, hit bool) {
	if hit {
		c.hits[l].Add(1)
	} else {
		c.misses[l].Add(1)
	}
}

// moved counts blob bytes (blob) that took wire bytes on the wire.
func (c *counters) moved(d Direction, e Encoding, blob, wire int64) {
	c.blob[d][e].Add(blob)
	c.wire[d][e].Add(wire)
}

// Stats reads the server's counters. It is safe for concurrent use, and
// cheap: what it reads is kept up to date as calls go.
func (s *Server) Stats() Stats {
	var st Stats
	for l := range numLookups {
		st.Hits[l], st.Misses[l] = s.count.hits[l].Load(), s.count.misses[l].Load()
	}
	for d := range numDirections {
		for e := range numEncodings {
			st.BlobBytes[d][e], st.WireBytes[d][e] = s.count.blob[d][e].Load(), s.count.wire[d][e].Load()
		}
	}
	st.ActiveUploads, st.ParkedUploads, st.ParkedBytes = s.uploads.counts()
	if s.quota != nil {
		qs := s.quota.stats()
		st.Quota = &qs
	}
	return st
}
