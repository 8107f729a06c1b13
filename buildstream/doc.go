// Package buildstream owns what bst-cache knows of BuildStream itself: how
// element names and cache keys make refs, BuildStream's Remote Asset URNs,
// what an artifact (BuildStream 1's tree, BuildStream 2's Artifact proto)
// names in CAS and records of its keys and dependencies, running `bst show`
// to resolve elements (their strict keys, and for non-strict mode their
// weak keys, which bst's own command line prints when run with one more
// format field), and BuildStream's own configuration files.
//
// It reads and parses; it never touches the network or the local store
// (package cache stores, package transfer moves). Its parsers take bytes
// and return errors that say what was wrong where.
package buildstream
