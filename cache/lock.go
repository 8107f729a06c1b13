package cache

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Lock takes the store's lock: shared for a transfer (any number at once),
// exclusive for a garbage collection, which must not remove objects a
// transfer has written and not yet named in a ref. It waits, polling, until
// the lock is free or ctx ends; waiting is called once if it must wait.
// Release with the returned function. A store that does not exist yet is
// not created: a shared lock is taken by its first write, and an exclusive
// one has nothing to guard.
func (s *Store) Lock(ctx context.Context, exclusive bool, waiting func()) (unlock func(), err error) {
	s.mu.Lock()
	if !s.existed {
		// Another process may have made the store since it was opened.
		_, s.existed = DetectLayout(s.root)
	}
	if !s.made && !s.existed {
		// Nothing to guard yet: the first write locks (shared), and a gc
		// of a store that does not exist has nothing to remove.
		s.lockWanted, s.lockCtx, s.lockWaiting = !exclusive, ctx, waiting
		s.mu.Unlock()
		return func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.lockWanted, s.lockCtx, s.lockWaiting = false, nil, nil
			if s.lockFile != nil {
				s.lockFile.Close()
				s.lockFile = nil
			}
		}, nil
	}
	s.mu.Unlock()
	// A store that exists but has no tmp/ yet (bst-artifact-server's,
	// BuildStream 1's own cache) is locked now, whichever the lock.
	if err := s.ensure(); err != nil {
		return nil, err
	}
	f, err := s.flock(ctx, exclusive, waiting)
	if err != nil {
		return nil, err
	}
	return func() { f.Close() }, nil
}

// flock opens the lock file and locks it, waiting as Lock says.
func (s *Store) flock(ctx context.Context, exclusive bool, waiting func()) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(s.tmp, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	for first := true; ; first = false {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if err != unix.EWOULDBLOCK {
			f.Close()
			return nil, err
		}
		if first && waiting != nil {
			waiting()
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// CleanTmp removes temporary files older than age: what writers killed
// before they could rename left behind, and partial downloads kept for a
// resume (ResumableWriter) that no run came back for. The lock and the
// store's ID stay.
func (s *Store) CleanTmp(age time.Duration) (int, error) {
	entries, err := os.ReadDir(s.tmp)
	if err != nil {
		return 0, err
	}
	n := 0
	now := time.Now()
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || strings.HasPrefix(e.Name(), ".") || now.Sub(info.ModTime()) < age {
			continue
		}
		if os.Remove(filepath.Join(s.tmp, e.Name())) == nil {
			n++
		}
	}
	return n, nil
}
