// Package tokenfile reads a bearer token from a file and reads it again
// when the file changes (its size, modification time or inode: a rename
// over it, as a secret manager or a symlink swap does), so a rotated
// token is used without a restart. The server side of `serve
// --access-token` and a client cache's access-token share it.
//
// A File looks at the file at most once per interval; a caller that has a
// reason to think the token changed (the server refused it; a client
// offered a token that did not match) may look again sooner with Fresh.
// A new content that is not a token (an empty file, several lines, an
// unreadable file) keeps the last good token and is reported once, until
// a good token is read again. Neither the token nor the file's content
// ever appears in an error.
package tokenfile

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Interval is how often a File looks at its file by default.
const Interval = time.Second

// File is a token file, read again when it changes. It is safe for
// concurrent use.
type File struct {
	path    string
	every   time.Duration
	onError func(error)

	token   atomic.Pointer[string]
	checked atomic.Int64 // unix nanoseconds of the last look

	mu  sync.Mutex
	fi  os.FileInfo // the file as it was when the token was read
	bad bool        // the last look found no token: reported already
}

// Option configures Open.
type Option func(*File)

// WithOnError is called once when the file changed and holds no token
// (the last good one stays in use), and again only after a good token
// was read in between. The default ignores it.
func WithOnError(fn func(error)) Option { return func(f *File) { f.onError = fn } }

// Open reads the token in path: an error when it holds none.
func Open(path string, opts ...Option) (*File, error) {
	f := &File{path: path, every: Interval, onError: func(error) {}}
	for _, o := range opts {
		o(f)
	}
	fi, tok, err := read(path)
	if err != nil {
		return nil, err
	}
	f.fi = fi
	f.token.Store(&tok)
	f.checked.Store(time.Now().UnixNano())
	return f, nil
}

// Path is the file's path.
func (f *File) Path() string { return f.path }

// Token is the current token, looking at the file first when the last
// look is older than the interval.
func (f *File) Token() string { return f.Fresh(f.every) }

// Fresh is the current token, looking at the file first when the last
// look is older than maxAge (0: now).
func (f *File) Fresh(maxAge time.Duration) string {
	if time.Since(time.Unix(0, f.checked.Load())) < maxAge {
		return *f.token.Load()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(time.Unix(0, f.checked.Load())) < maxAge {
		return *f.token.Load() // another caller just looked
	}
	defer f.checked.Store(time.Now().UnixNano())
	if fi, err := os.Stat(f.path); err == nil && same(fi, f.fi) {
		return *f.token.Load()
	}
	fi, tok, err := read(f.path)
	if err != nil {
		if !f.bad {
			f.bad = true
			f.onError(fmt.Errorf("%w: still using the token read before", err))
		}
		return *f.token.Load()
	}
	f.bad = false
	f.fi = fi
	f.token.Store(&tok)
	return tok
}

// same says whether two looks at a file saw the same file, unchanged.
func same(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// read reads a token: one non-empty line. Errors name the file, never its
// content.
func read(path string) (os.FileInfo, string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, "", fmt.Errorf("cannot read the access-token file %s: %w", path, pathless(err))
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return nil, "", fmt.Errorf("cannot read the access-token file %s: %w", path, pathless(err))
	}
	if fi.Size() > maxSize {
		return nil, "", fmt.Errorf("the access-token file %s holds %d bytes: a token is one line of at most %d", path, fi.Size(), maxSize)
	}
	data := make([]byte, fi.Size())
	n, err := io.ReadFull(fh, data)
	if err != nil {
		return nil, "", fmt.Errorf("cannot read the access-token file %s: %w", path, pathless(err))
	}
	tok := strings.TrimSpace(string(data[:n]))
	if tok == "" || strings.ContainsAny(tok, "\r\n") {
		return nil, "", fmt.Errorf("the access-token file %s must hold one token on one line", path)
	}
	return fi, tok, nil
}

// maxSize bounds what is read from a token file.
const maxSize = 64 << 10

// pathless drops the path an *os.PathError repeats.
func pathless(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
