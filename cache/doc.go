// Package cache is bst-cache's local content-addressed store. It reads and
// writes BuildStream's own on-disk layouts, so a store directory can be
// BuildStream's cache directory:
//
//	bst1: DIR/cas/objects/ab/cdef…    refs: DIR/cas/refs/heads/{ref} (a serialized Digest)
//	bst2: DIR/cas/cas/objects/ab/cdef…  artifacts: DIR/artifacts/refs/{ref}  sources: DIR/source_protos/{ref}
//
// Every write goes to a temporary file under DIR/tmp, is checked against its
// digest while it is written, is fsynced and then renamed into place, so a
// crash never leaves a partial object or ref under its final name, and any
// number of processes may share one store.
package cache
