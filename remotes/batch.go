package remotes

import (
	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// blobFraming is what one blob adds to a batch message besides its data:
// the digest, the status and the field tags.
const blobFraming = 256

// Plan splits blobs for transfer to or from this cache: small ones packed
// into batches whose data and framing fit MaxBatchBytes, in the order
// given, and the rest, which go through ByteStream one by one.
func (r *Remote) Plan(ds []digest.Digest) (batches [][]digest.Digest, streamed []digest.Digest) {
	limit := r.MaxBatchBytes()
	var batch []digest.Digest
	var size int64
	for _, d := range ds {
		if d.Size+blobFraming > limit {
			streamed = append(streamed, d)
			continue
		}
		if size+d.Size+blobFraming > limit {
			batches = append(batches, batch)
			batch, size = nil, 0
		}
		batch = append(batch, d)
		size += d.Size + blobFraming
	}
	if len(batch) > 0 {
		batches = append(batches, batch)
	}
	return batches, streamed
}
