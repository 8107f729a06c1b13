// Package transfer moves BuildStream artifacts and sources between the
// local store (package cache) and a priority list of remote caches
// (package remotes): pull, push, copy and which. It knows the BuildStream
// formats (what a ref names, how each index is asked) and nothing of the
// command line; progress and logs go through the Events it is given.
//
// It reaches caches through two small interfaces of its own, storage (a
// CAS) and index (ReferenceStorage and Remote Asset), which
// *remotes.Remote implements; the engine's rules are table-tested over an
// in-memory cache, and end to end against real servers in commands/. One
// conformance suite (storage_test.go) holds every storage to the same
// contract: serve, bazel-remote, bst-artifact-server and the in-memory
// cache pass it. The behaviours the client engine and Mirror share are
// blocks of their own, each with its table test: the breaker (a cache
// that fails skipped for a while, then probed by one caller) and flights
// (single flight: one download of a blob, one upload of it to a target).
//
// Refs are of one cache.Kind. With no format set (cache.KindArtifact) each
// index cache is asked for a ref as a BuildStream 1 and a BuildStream 2
// artifact at once, in one round, and what it holds is moved; the local
// store is read in both formats whatever its layout.
//
// Its contracts, which the command line turns into exit codes:
//   - A ref is StatusMissing only when every index cache that could hold it
//     answered that it does not; when one could not be asked, it is
//     StatusFailed, and the reason says what was not found where and which
//     caches were not asked.
//   - A local ref is written only once every blob it names is in the local
//     store, and durable there (a pull's artifacts finishing within 100 ms
//     of each other share that sync of the store); a remote index entry
//     only once every blob it names is on the target's storage, or
//     confirmed on the storage its readers use.
//   - A target is skipped only when it names the same digest and holds every
//     blob; otherwise it is repaired. One naming another digest is left
//     alone (StatusConflict) unless forced.
//   - An artifact is one unit: refs naming it (its strong and weak key)
//     move it once per target, its refs go in one index entry (never over
//     a ref the target names another digest under, unless forced), and
//     each of them is done. A blob goes to a target once per run.
//   - Targets are written at once and each on its own: an artifact goes to
//     every target concurrently (up to 8 at a time; storage targets still
//     before index-only ones), and each target has its own result for each
//     ref, counted as such. A target that is down, hangs or refuses fails
//     its own results only and delays no other's: once a call to it fails
//     as a dead cache does (unreachable, timed out, refused) it is skipped
//     for the breaker's wait, so it costs each run one timeout at most.
//   - Copy takes the sources as the only evidence: the local store saves
//     downloads, never stands in for a source. It asks each target first:
//     one that is down fails the ref there, and one that names the digest
//     the sources name and holds its closure is skipped, with no file
//     pulled. A ref is pulled once, for the first target that lacks it and
//     is not known down once a pull slot is free: nothing is pulled for a
//     ref whose every target proved down. What the sources say of a ref
//     (missing, failed, a failed build) is each waiting target's result.
//     A no-op copy costs each ref one lookup per target and the source's
//     check; refs naming one artifact share the survey of its closure
//     (for every target), read with one GetTree where the storage has it.
//   - List (sync) says what one cache holds through its listing service
//     (bst-cache serve): a cache that cannot list is an error wrapping
//     remotes.ErrCannotList, never an empty listing. sync is List, then
//     Copy: nothing else of its own. Connect probes caches all at once
//     (a sync's targets while its source lists).
//   - A Remote Asset fetch the index refuses (Buildbarn's bb_remote_asset
//     without an "error" fetcher) is a miss for every command.
//   - Dry runs change nothing, remote or local, and report what would move.
//   - A cache that proves unreachable or refuses us is skipped for a while
//     (5 s, doubling up to 2 min) and then asked again; each caller of a
//     shared cache is told of its own retries and skips.
//   - BuildStream's non-strict mode (PullOptions.Weak): a ref every cache
//     answered it does not hold is pulled by the same element's weak ref
//     instead, unless the local store holds that; as bst 1.6 pulls.
//   - Jobs bounds the transfers that move bytes at once (a ref pulled, a
//     ref pushed to one target); up to 32 times as many refs
//     are looked up and checked ahead of them (round trips, no bytes), and
//     downloads in flight are bounded to 32 MiB, so memory stays bounded
//     whatever the number of refs.
//   - A Mirror (serve --upstream) pulls with the same code, through one
//     fetcher for all its requests: one upstream fetch per blob and per ref
//     at once, bytes in flight bounded for the whole server. A ref it fills
//     is written only with its whole closure; an outage is a miss. A blob
//     read through is sent as it arrives and stored only once it matched
//     its digest; an upstream that corrupted it is passed over for it.
//   - A Replicator (serve --replicate-to) pushes with the same code: every
//     BuildStream entry a client writes goes to each replica with Push,
//     blobs it lacks first, then the entry. The work is a file per entry in
//     a journal per replica, fsynced before the client's write is
//     acknowledged, replayed after a restart or a kill, removed once the
//     replica took it; a ref queued twice moves once, the journal's bound
//     drops the oldest with a warning saying how many, and a replica that
//     fails is skipped by the breaker (at most 5 s at a time for a
//     replica) and retried. An index-only replica's entry is written once
//     the replicas with storage hold every blob it names. Stats are each
//     replica's counters (done, failed, dropped, queued and the oldest
//     entry, the lag, bytes sent) for logs and metrics.
//   - A large blob cut short (Ctrl-C, a kill, a failed cache) resumes in
//     the next run: a download from the bytes the local store kept, an
//     upload from what the target holds, under an upload name derived from
//     the local store's ID.
package transfer
