// Package cache is bst-cache's local content-addressed store. It reads and
// writes BuildStream's own on-disk layouts, so a store directory can be
// BuildStream's cache directory:
//
//	bst1: DIR/cas/objects/ab/cdef…    refs: DIR/cas/refs/heads/{ref} (a serialized Digest)
//	bst2: DIR/cas/cas/objects/ab/cdef…  artifacts: DIR/artifacts/refs/{ref}  sources: DIR/source_protos/{ref}
//
// Refs of both BuildStreams may sit side by side in one store whatever its
// layout (serve keeps both generations; ListRefs(KindArtifact) lists both).
// Nothing is created until the first write: a run that writes nothing
// leaves no store behind, and a new store without a layout takes that of
// the first artifact written (Settle), BuildStream 1's for a BuildStream 1
// artifact, as bst-artifact-server keeps it.
//
// Every write goes to a temporary file under DIR/tmp, is checked against its
// digest while it is written, and is then renamed (or linked) into place,
// so a crash never leaves a partial object or ref under its final name,
// and any number of processes may share one store. Objects are not synced
// one by one: writing refs (SetRefs) syncs the file system once after the
// refs' temporary files are written and before they are renamed, which
// makes the refs and every object they name durable before any ref names
// them; the refs' directories are synced after. Refs written at once
// share the sync of the file system: one serves every writer that was
// waiting when it began, and WriteRefs writes many artifacts' refs after
// one. Each ref is a file of its own (never a hard link to another ref):
// a tool that writes one in place changes that ref alone.
//
// A download that may be resumed (ResumableWriter) keeps its bytes under
// DIR/tmp/partial-{hash}-{size} when it is cut short; the next writer of
// that digest hashes them again and goes on after them, so every byte is
// still checked. Partial files are locked while written and removed, as
// any temporary file, once they are older than an hour when a store is
// opened, or older than --grace by gc. DIR/tmp/.id is the store's random
// ID (ID), which names resumable uploads; DIR/tmp/.health-probe is what
// a health check (Probe) writes, syncs, reads back and removes.
//
// A long-lived process may keep an index of the objects in memory
// (IndexObjects, for Present and Absent): 30 to 60 bytes an object (a
// 16-byte hash prefix and a size in a map per prefix directory), filled by
// a walk in the background and kept exact across processes by inotify on
// the objects directories, from what the disk says alone (the walk, the
// events, a listing of each directory made after the watch began); where
// it cannot be exact (the walk not done, inotify unavailable, an
// overflowed queue, after which it is built again) the disk answers. Has
// and everything that decides whether a ref may be written ask the disk.
package cache
