// Package zstdwire is REAPI's zstd compression on the wire, shared by the
// client (remotes) and the server (server): compressed-blobs ByteStream
// resources and compressed batch entries.
//
// Its contract: every decompression is bounded by the size of the digest
// it is for. A stream or a batch entry that inflates past that size is an
// error (ErrTooLarge) as soon as the first byte too many is produced, so a
// zstd bomb costs at most the digest's size in memory or disk, never more.
// Callers still check the hash of what comes out; this package only
// bounds and decodes. Encoders and decoders are pooled and safe for
// concurrent use.
package zstdwire
