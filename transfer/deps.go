package transfer

import (
	"context"
	"errors"
	"fmt"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sync/errgroup"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
)

// ErrRunDeps is returned for --deps run on refs: artifacts record their
// build dependencies only.
var ErrRunDeps = errors.New("for refs, --deps follows the build dependencies artifacts record; run-time dependencies are not recorded: name elements in their project, or use --deps build or all")

// Expand returns refs followed by the refs of their recorded build
// dependencies, transitively, each once: BuildStream 1's
// meta/dependencies.yaml (the whole build scope, by element name; a
// junctioned dependency is taken to be in the same project, since the file
// does not say), BuildStream 2's Artifact.build_deps. Metadata comes from
// the local store, else from the caches (read, not stored). A ref whose
// metadata is nowhere stays in the list and the transfer reports it.
//
// The refs come breadth first, as a queue would hand them out, and the
// metadata of each level is read lookahead() refs at a time: the round
// trips of a level overlap, so a slow link costs a few round trips a
// level, not a few a ref. The first error in that order is returned.
func (e *Engine) Expand(ctx context.Context, refs []string, deps buildstream.Deps) ([]string, error) {
	ctx = e.Events.bind(ctx)
	switch deps {
	case buildstream.DepsNone:
		return refs, nil
	case buildstream.DepsRun:
		return nil, ErrRunDeps
	}
	seen := map[string]bool{}
	var out []string
	for level := refs; len(level) > 0; {
		// Each ref once, where it first comes.
		var todo []string
		for _, ref := range level {
			if !seen[ref] {
				seen[ref] = true
				todo = append(todo, ref)
			}
		}
		found := make([][]buildstream.Dependency, len(todo))
		errs := make([]error, len(todo))
		var g errgroup.Group
		g.SetLimit(e.lookahead())
		for i, ref := range todo {
			g.Go(func() error {
				found[i], errs[i] = e.dependencies(ctx, ref)
				return nil
			})
		}
		g.Wait()
		level = nil
		for i, ref := range todo {
			out = append(out, ref)
			if errors.Is(errs[i], errNoMeta) {
				continue
			}
			if errs[i] != nil {
				return nil, fmt.Errorf("%s: reading its dependencies: %w", ref, errs[i])
			}
			project, _, _, err := buildstream.SplitRef(ref)
			if err != nil {
				return nil, err
			}
			for _, d := range found[i] {
				level = append(level, d.Ref(project))
			}
		}
	}
	return out, nil
}

// errNoMeta: the artifact is in neither the local store nor a cache.
var errNoMeta = errors.New("artifact metadata not found")

// dependencies reads what one artifact records of its build dependencies.
func (e *Engine) dependencies(ctx context.Context, ref string) ([]buildstream.Dependency, error) {
	en, err := e.findEntry(ctx, ref)
	if err != nil {
		return nil, err
	}
	if en.kind != cache.KindBst1Artifact {
		art, err := buildstream.ParseArtifact(en.content)
		if err != nil {
			return nil, err
		}
		return buildstream.ArtifactDependencies(art), nil
	}
	data, err := e.metaFile(ctx, en, buildstream.DependenciesFile)
	if err != nil {
		return nil, err
	}
	return buildstream.ParseDependencies(data)
}

// findEntry is a ref's entry from the local store, else from the first
// cache that names it.
func (e *Engine) findEntry(ctx context.Context, ref string) (entry, error) {
	if en, err := localEntry(e.Store, e.Kind, ref); err == nil {
		return en, nil
	}
	var found *entry
	_, err := e.resolve(ctx, ref, func(c *Cache, k cache.Kind, d digest.Digest) (bool, error) {
		en, err := e.remoteEntry(ctx, k, d)
		if err != nil {
			return false, nil // the next hit may be readable
		}
		found = &en
		return true, nil
	})
	if err != nil {
		return entry{}, err
	}
	if found == nil {
		return entry{}, errNoMeta
	}
	return *found, nil
}

// metaFile reads a BuildStream 1 artifact's meta/NAME from what was read
// of it already (en.read), the local store or the storage caches.
func (e *Engine) metaFile(ctx context.Context, en entry, name string) ([]byte, error) {
	read := func(d digest.Digest) ([]byte, error) {
		if data, ok := en.read[d]; ok {
			return data, nil
		}
		if data, err := e.Store.ReadBlob(d); err == nil {
			return data, nil
		}
		return readFirst(ctx, e, e.storage(), d)
	}
	d := en.digest
	for _, part := range []string{buildstream.MetaDir, name} {
		data, err := read(d)
		if err != nil {
			return nil, err
		}
		dir, err := cache.ParseDirectory(data)
		if err != nil {
			return nil, err
		}
		next, ok := childDigest(dir, part)
		if !ok {
			return nil, fmt.Errorf("%s/%s: %w", buildstream.MetaDir, name, errNoMeta)
		}
		d = next
	}
	return read(d)
}

// allRefs are every ref a local artifact is stored under: the one given
// and its others (strong and weak), from its keys. Sources have one.
func (e *Engine) allRefs(ctx context.Context, ref string, en entry) []string {
	return refsOf(ref, e.artifactKeys(ctx, en))
}

// artifactKeys are a local artifact's keys, from keys.yaml (BuildStream
// 1) or the Artifact (BuildStream 2); none for a source, or when they
// cannot be read.
func (e *Engine) artifactKeys(ctx context.Context, en entry) buildstream.Keys {
	switch en.kind {
	case cache.KindBst1Artifact:
		data, err := e.metaFile(ctx, en, buildstream.KeysFile)
		if err != nil {
			return buildstream.Keys{}
		}
		keys, err := buildstream.ParseKeys(data)
		if err != nil {
			return buildstream.Keys{}
		}
		return keys
	case cache.KindBst2Artifact:
		art, err := buildstream.ParseArtifact(en.content)
		if err != nil {
			return buildstream.Keys{}
		}
		return buildstream.ArtifactKeys(art)
	}
	return buildstream.Keys{}
}

// refsOf is ref, then ref under each other of keys.
func refsOf(ref string, keys buildstream.Keys) []string {
	out := []string{ref}
	for _, k := range keys.All() {
		if other := buildstream.WithKey(ref, k); other != ref && k != "" {
			out = append(out, other)
		}
	}
	return out
}

// FilesRoot is the Directory holding a local artifact's files: BuildStream
// 1's files/ in the artifact's tree, BuildStream 2's Artifact.files.
func (e *Engine) FilesRoot(ref string) (digest.Digest, error) {
	en, err := localEntry(e.Store, e.Kind, ref)
	if err != nil {
		return digest.Digest{}, err
	}
	switch en.kind {
	case cache.KindBst1Artifact:
		data, err := e.Store.ReadBlob(en.digest)
		if err != nil {
			return digest.Digest{}, err
		}
		dir, err := cache.ParseDirectory(data)
		if err != nil {
			return digest.Digest{}, err
		}
		d, ok := childDigest(dir, "files")
		if !ok {
			return digest.Digest{}, fmt.Errorf("%s: the artifact has no files/ directory", ref)
		}
		return d, nil
	case cache.KindBst2Artifact:
		art, err := buildstream.ParseArtifact(en.content)
		if err != nil {
			return digest.Digest{}, err
		}
		return digest.NewFromProto(art.GetFiles())
	}
	return digest.Digest{}, fmt.Errorf("%s: sources have no files to check out", ref)
}
