package transfer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sync/errgroup"

	"github.com/bst-cache/bst-cache/cache"
)

// treeReaders is how many Directories localTrees reads at a time: the
// reads wait on system calls more than on the processor.
const treeReaders = 8

// localTrees answers closures of a batch of roots in the local store, as
// cache.Store.ClosureOf does (a Directory the store lacks is missing and
// nothing below it is known; one that cannot be read or parsed is an
// error), from Directories read once across all of them, treeReaders at a
// time, and kept as numbers local to the batch: what a Directory holds
// takes 4 bytes per entry. Whether a file is present is the caller's
// business (its object table). reset forgets the batch, so what it holds
// is a batch's, whatever the store's size.
type localTrees struct {
	store *cache.Store
	num   map[cache.DigestKey]int32
	keys  []cache.DigestKey
	// at is, by number, what reading a Directory found: 0 not read yet,
	// dirMissing, dirFailed (the error in failed), or 1 + the offset in
	// entries of its files' count, its subdirectories' count and their
	// numbers.
	at      []int32
	entries []int32
	failed  map[int32]error
	// seen marks what the closure being walked (number walk) has met.
	seen []uint32
	walk uint32
}

const (
	dirMissing = -1
	dirFailed  = -2
)

func newLocalTrees(s *cache.Store) *localTrees {
	return &localTrees{store: s, num: map[cache.DigestKey]int32{}, failed: map[int32]error{}}
}

// reset forgets every number, for the next batch.
func (lt *localTrees) reset() {
	clear(lt.num)
	clear(lt.failed)
	lt.keys, lt.at, lt.entries, lt.seen, lt.walk = lt.keys[:0], lt.at[:0], lt.entries[:0], lt.seen[:0], 0
}

// number is d's number in this batch.
func (lt *localTrees) number(d digest.Digest) int32 {
	k := cache.KeyOf(d)
	if n, ok := lt.num[k]; ok {
		return n
	}
	n := int32(len(lt.keys))
	lt.num[k] = n
	lt.keys = append(lt.keys, k)
	lt.at = append(lt.at, 0)
	lt.seen = append(lt.seen, 0)
	return n
}

// digest is number n's digest.
func (lt *localTrees) digest(n int32) digest.Digest { return keyDigest(lt.keys[n]) }

// refBatch is how many refs are read at a time (treeReaders at a time)
// before the Directories under them are.
const refBatch = 1024

// localEntries reads refs of kind k from the local store, treeReaders at
// a time: each one's entry or error.
func (e *Engine) localEntries(ctx context.Context, k cache.Kind, refs []string) ([]entry, []error) {
	ens := make([]entry, len(refs))
	errs := make([]error, len(refs))
	var g errgroup.Group
	g.SetLimit(treeReaders)
	for i, ref := range refs {
		g.Go(func() error {
			if errs[i] = ctx.Err(); errs[i] == nil {
				ens[i], errs[i] = localEntry(e.Store, k, ref)
			}
			return nil
		})
	}
	g.Wait()
	return ens, errs
}

// numRoots are an entry's roots, its optional trees included, as numbers.
type numRoots struct{ dirs, blobs []int32 }

// rootsOf numbers en's roots; a digest that is not valid is an error, as
// reading it from the store would be.
func (lt *localTrees) rootsOf(en entry) (numRoots, error) {
	numbers := func(ds ...[]digest.Digest) ([]int32, error) {
		var out []int32
		for _, d := range slices.Concat(ds...) {
			if err := cache.CheckDigest(d); err != nil {
				return nil, err
			}
			out = append(out, lt.number(d))
		}
		return out, nil
	}
	dirs, err := numbers(en.roots.Dirs, en.optional.Dirs)
	if err != nil {
		return numRoots{}, err
	}
	blobs, err := numbers(en.roots.Blobs, en.optional.Blobs)
	return numRoots{dirs, blobs}, err
}

// load reads the Directories under roots that are not read yet, level by
// level, and tells saw (when not nil) of each one read.
func (lt *localTrees) load(ctx context.Context, roots []numRoots, saw func(int32, *repb.Directory)) error {
	queued := map[int32]bool{}
	var level []int32
	queue := func(n int32) {
		if lt.at[n] == 0 && !queued[n] {
			queued[n] = true
			level = append(level, n)
		}
	}
	for _, r := range roots {
		for _, n := range r.dirs {
			queue(n)
		}
	}
	for len(level) > 0 {
		read := make([]*repb.Directory, len(level))
		errs := make([]error, len(level))
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(treeReaders)
		for i, n := range level {
			g.Go(func() error {
				if err := gctx.Err(); err != nil {
					return err
				}
				d := lt.digest(n)
				data, err := lt.store.ReadBlob(d)
				if err == nil {
					if read[i], err = cache.ParseDirectory(data); err != nil {
						err = fmt.Errorf("directory %s: %w", d, err)
					}
				}
				errs[i] = err
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		this := level
		level = nil
		for i, n := range this {
			lt.keep(n, read[i], errs[i])
			if saw != nil && read[i] != nil {
				saw(n, read[i])
			}
			off := lt.at[n] - 1
			if off < 0 {
				continue
			}
			files := lt.entries[off]
			for _, sub := range lt.entries[off+2+files : off+2+files+lt.entries[off+1]] {
				queue(sub)
			}
		}
	}
	return nil
}

// keep records what reading Directory n found.
func (lt *localTrees) keep(n int32, dir *repb.Directory, err error) {
	switch {
	case errors.Is(err, cache.ErrNotFound):
		lt.at[n] = dirMissing
		return
	case err != nil:
		lt.at[n] = dirFailed
		lt.failed[n] = err
		return
	}
	off := int32(len(lt.entries))
	lt.entries = append(lt.entries, int32(len(dir.GetFiles())), int32(len(dir.GetDirectories())))
	for _, f := range dir.GetFiles() {
		lt.entries = append(lt.entries, lt.number(digest.NewFromProtoUnvalidated(f.GetDigest())))
	}
	for _, sub := range dir.GetDirectories() {
		lt.entries = append(lt.entries, lt.number(digest.NewFromProtoUnvalidated(sub.GetDigest())))
	}
	lt.at[n] = off + 1
}

// reach is what a closure knows of a digest it met.
type reach int8

const (
	// reachFile is a file: present if the caller's object table holds it.
	reachFile reach = iota
	// reachDir is a Directory read from the store.
	reachDir
	// reachLost is a Directory the store lacks.
	reachLost
)

// closure walks the closure of roots (their Directories loaded) in
// memory, breadth first as cache.Walk does, and calls fn for each digest
// once with what it knows of it. The first Directory that could not be
// read ends the walk with its error.
func (lt *localTrees) closure(r numRoots, fn func(k cache.DigestKey, r reach)) error {
	lt.walk++
	if lt.walk == 0 { // wrapped: clear the marks of 4 billion walks ago
		clear(lt.seen)
		lt.walk = 1
	}
	var files, level, next []int32
	see := func(n int32, list *[]int32) {
		if lt.seen[n] != lt.walk {
			lt.seen[n] = lt.walk
			*list = append(*list, n)
		}
	}
	for _, n := range r.blobs {
		see(n, &files)
	}
	for _, n := range r.dirs {
		see(n, &level)
	}
	for len(level) > 0 {
		for _, n := range level {
			switch at := lt.at[n]; at {
			case 0:
				return fmt.Errorf("directory %s was not loaded", lt.digest(n))
			case dirMissing:
				fn(lt.keys[n], reachLost)
			case dirFailed:
				return lt.failed[n]
			default:
				fn(lt.keys[n], reachDir)
				nf := lt.entries[at-1]
				list := lt.entries[at+1 : at+1+nf+lt.entries[at]]
				for i, sub := range list {
					if int32(i) < nf {
						see(sub, &files)
					} else {
						see(sub, &next)
					}
				}
			}
		}
		level, next = next, level[:0]
	}
	for _, n := range files {
		fn(lt.keys[n], reachFile)
	}
	return nil
}

// keyDigest is the digest of key k.
func keyDigest(k cache.DigestKey) digest.Digest {
	return digest.Digest{Hash: hex.EncodeToString(k.Hash[:]), Size: keySize(k)}
}

// keySize is the size of the digest of key k.
func keySize(k cache.DigestKey) int64 {
	if k.Size < 0 {
		return -1 - k.Size
	}
	return k.Size
}
