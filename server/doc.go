// Package server serves a local store (package cache) over gRPC: the
// services behind `bst-cache serve`: REAPI v2 Capabilities,
// ContentAddressableStorage and ByteStream, Remote Asset and BuildStream
// 1's ReferenceStorage. Every uploaded blob is checked against its digest
// before it is stored, and writes are refused with PERMISSION_DENIED
// unless enabled.
//
// With an Upstream (serve --upstream) every read path fills a local miss
// from it before answering: index lookups fill whole refs, batch reads
// and GetTree their blobs and Directories, FindMissingBlobs reports what
// an upstream holds as present, a push naming such blobs fills them, and
// a whole-blob ByteStream read streams through, ending in DATA_LOSS when
// the bytes did not match. What a fill stores counts against the quota.
//
// With a Replicator (serve --replicate-to) every BuildStream index entry a
// client writes (UpdateReference, Remote Asset Push of a BuildStream URN)
// is handed to it once stored, before the client is answered: the write
// fails with UNAVAILABLE when the replicator cannot journal it, or, with
// policy all, when a replica cannot take it now (the store keeps it).
//
// Every call, refused ones included, ends in a Call record (method, peer,
// instance, status, message bytes in and out, duration, the refs or URIs
// an index call named, FindMissingBlobs' digests asked and missing, the
// client's REAPI RequestMetadata) handed to each GRPCOptions.OnCall: the
// AccessLog (serve --access-log) is one, serve -v's lines another, the
// metrics' per-call series (package metrics) a third. With GRPCOptions.Token every call needs
// the token file's current token; the file is read again when it changes.
//
// Lookups and corruption: the store keeps an index of its objects in
// memory (cache.Store.IndexObjects: a walk at start-up in the background,
// the same walk that fills the quota's account, then inotify for what any
// process links or removes), so that FindMissingBlobs and a batch read of
// blobs the store lacks cost no system call per digest; while it cannot
// follow the disk (inotify unavailable, its queue overflowed: logged, and
// the index is built again) the disk answers. Reads never trust it for
// content: every blob a batch read returns is hashed before it is sent,
// and every whole-blob ByteStream read is hashed as it streams, its last bytes (or the end of
// its zstd frame) held back until the hash matched, so a bit that rots on
// disk is caught at the next read of the object, whenever it rotted, and
// a client never receives all of a corrupt blob: it gets DATA_LOSS, and
// the server logs the object. Nothing is verified once and trusted
// afterwards (ranged reads, which cannot be checked whole, excepted).
// A ref is written only after its closure was found on disk, never on
// the index's word.
//
// Counters and health: Stats reads what a server counted since it
// started (hits and misses by what was asked, blob bytes in and out by
// encoding, uploads in progress, the quota's account), kept as calls go,
// so reading it costs nothing per object; package metrics exports it.
// Health (GRPCOptions.Health) checks the store (cache.Store.Probe: a read,
// and for a server with writes a write, fsync and read back) and the
// quota every second and serves grpc.health.v1.Health, which needs no
// token.
//
// zstd (package zstdwire): the store keeps blobs uncompressed, in
// BuildStream's layout; compressed-blobs reads and batch answers are
// compressed on the way out (raw zstd blocks for content that does not
// compress), compressed uploads and batch entries inflated on the way in,
// never past their digest's size.
package server
