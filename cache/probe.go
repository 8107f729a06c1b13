package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ProbeFile is the file Probe writes under the store's temporary
// directory, DIR/tmp (a leading dot: CleanTmp leaves it alone).
const ProbeFile = ".health-probe"

// probeData is what Probe writes and reads back.
var probeData = []byte("bst-cache health probe\n")

// Probe checks that the store can be read and, with write, written, as a
// health check does: it lists the objects directory, and writes, fsyncs,
// reads back and removes DIR/tmp/.health-probe. A store not made yet (no
// write so far) reads as empty, and is writable when the nearest directory
// that exists on its path is. Probe is safe for concurrent use, also by
// several processes sharing the store.
func (s *Store) Probe(write bool) error {
	if _, err := os.Stat(s.tmp); errors.Is(err, fs.ErrNotExist) {
		if !write {
			return nil
		}
		dir := s.root
		for {
			if _, err := os.Stat(dir); err == nil || filepath.Dir(dir) == dir {
				break
			}
			dir = filepath.Dir(dir)
		}
		if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
			return fmt.Errorf("the store %s cannot be created in %s: %w", s.root, dir, err)
		}
		return nil
	}
	d, err := os.Open(s.objects())
	if err == nil {
		_, err = d.Readdirnames(1)
		d.Close()
	}
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading the store: %w", err)
	}
	if !write {
		return nil
	}
	if err := s.probeWrite(filepath.Join(s.tmp, ProbeFile)); err != nil {
		return fmt.Errorf("writing to the store: %w", err)
	}
	return nil
}

// probeWrite writes probeData to path, syncs it, reads it back and
// removes it.
func (s *Store) probeWrite(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err // not ours to remove: it may be a directory
	}
	_, err = f.Write(probeData)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		var got []byte
		// Another process probing the same store may have removed it.
		if got, err = os.ReadFile(path); err == nil && !bytes.Equal(got, probeData) {
			err = fmt.Errorf("%s read back %d bytes unlike those written", path, len(got))
		}
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
	}
	if rerr := os.Remove(path); err == nil && rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = rerr
	}
	return err
}
