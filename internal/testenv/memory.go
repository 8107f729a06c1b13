package testenv

import (
	"bytes"
	"fmt"
	"io"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
)

// MemoryOpener serves blobs held in memory to uploads (a remotes.Opener),
// for tests that send content that is not in a store.
func MemoryOpener(blobs map[digest.Digest][]byte) func(digest.Digest) (io.ReadCloser, error) {
	return func(d digest.Digest) (io.ReadCloser, error) {
		b, ok := blobs[d]
		if !ok {
			return nil, fmt.Errorf("blob %s: not in memory", d)
		}
		return memoryBlob{bytes.NewReader(b)}, nil
	}
}

// memoryBlob is a blob in memory; it seeks, so a resumed upload skips
// what the server holds without reading it.
type memoryBlob struct{ *bytes.Reader }

func (memoryBlob) Close() error { return nil }
