// Package server serves a local store (package cache) over gRPC: the
// services behind `bst-cache serve`. It starts with REAPI v2 Capabilities and
// ContentAddressableStorage; ByteStream, Remote Asset and ReferenceStorage
// follow. Every uploaded blob is checked against its digest before it is
// stored, and writes are refused with PERMISSION_DENIED unless enabled.
package server
