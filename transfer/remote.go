package transfer

import (
	"context"
	"errors"
	"io"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/remotes"
)

// storage is what transfers need of a cache's CAS. Every method is safe for
// concurrent use and honours ctx; a blob or tree the cache lacks is an
// error matching remotes.ErrNotFound (BatchRead lists them in missing
// instead). *remotes.Remote implements it.
type storage interface {
	// FindMissing returns the digests the cache lacks.
	FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error)
	// BatchRead reads small blobs in one call, each verified against its
	// digest (corrupt data is remotes.ErrCorrupt, a batch over the peer's
	// limit for one blob remotes.ErrTooLarge).
	BatchRead(ctx context.Context, ds []digest.Digest) (found map[digest.Digest][]byte, missing []digest.Digest, err error)
	// BatchReadEach is BatchRead handing each verified blob to fn, its
	// data in pieces where it came, valid only until fn returns (no copy
	// of its own).
	BatchReadEach(ctx context.Context, ds []digest.Digest, fn func(d digest.Digest, data [][]byte) error) (missing []digest.Digest, err error)
	// ReadBlobFrom streams a blob from byte off on into w, which holds
	// the bytes before off and checks the digest.
	ReadBlobFrom(ctx context.Context, d digest.Digest, off int64, w io.Writer) error
	// GetTree returns every Directory under root (UNIMPLEMENTED where the
	// server has no GetTree).
	GetTree(ctx context.Context, root digest.Digest) ([]*repb.Directory, error)
	// Plan splits blobs into batches that fit the cache's limit and the
	// rest, which stream.
	Plan(ds []digest.Digest) (batches [][]digest.Digest, streamed []digest.Digest)
	// MaxBatchBytes is the cache's current batch limit.
	MaxBatchBytes() int64
	// Send sends ds (which FindMissing said the cache lacks) and returns
	// how many bytes it sent.
	Send(ctx context.Context, ds []digest.Digest, open remotes.Opener, jobs int) (int64, error)
}

// index is what transfers need of a cache's ref index: BuildStream 1's
// ReferenceStorage and the Remote Asset API. A miss matches
// remotes.ErrNotFound. *remotes.Remote implements it.
type index interface {
	FetchDirectory(ctx context.Context, uri string) (digest.Digest, error)
	FetchBlob(ctx context.Context, uri string) (digest.Digest, error)
	GetReference(ctx context.Context, ref string) (digest.Digest, error)
	// PushDirectory and PushBlob record one asset under every URI given.
	PushDirectory(ctx context.Context, uris []string, root digest.Digest) error
	PushBlob(ctx context.Context, uris []string, blob digest.Digest, refBlobs, refDirs []digest.Digest) error
	UpdateReference(ctx context.Context, refs []string, d digest.Digest) error
}

// remote is one connected cache.
type remote interface {
	storage
	index
	Close() error
}

var _ remote = (*remotes.Remote)(nil)

// dialer connects to a cache and probes it. Given the remote of an
// earlier connect (old), it only checks that the cache answers again and
// returns old. A cache that fails is skipped for a while.
type dialer func(ctx context.Context, cfg config.Cache, old remote, opts ...remotes.Option) (remote, remotes.Capabilities, error)

// dialRemote is the dialer of real caches: gRPC, then a probe within the
// cache's connect-timeout.
func dialRemote(ctx context.Context, cfg config.Cache, old remote, opts ...remotes.Option) (remote, remotes.Capabilities, error) {
	pctx, cancel := context.WithTimeout(ctx, probeBound(cfg))
	defer cancel()
	if old != nil {
		// Callers may be using old: a full probe would reset what they
		// read (compression, batch sizes shrunk since), so what the
		// first probe learnt stays and the cache only has to answer.
		_, err := old.(*remotes.Remote).Capabilities(pctx)
		var re *remotes.Error
		if errors.As(err, &re) && re.Code == codes.Unimplemented {
			err = nil
		}
		return old, remotes.Capabilities{}, err
	}
	// The connection outlives this caller: its cancellation is not the
	// remote's (the probe below still honours it).
	r, err := remotes.Dial(context.WithoutCancel(ctx), cfg, opts...)
	if err != nil {
		return nil, remotes.Capabilities{}, err
	}
	res := remotes.Probe(pctx, r, cfg.Type)
	if res.Err != nil {
		r.Close()
		return nil, remotes.Capabilities{}, res.Err
	}
	return r, res.Caps, nil
}
