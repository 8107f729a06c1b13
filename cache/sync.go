package cache

import (
	"fmt"
	"io/fs"
	"sync"

	"golang.org/x/sys/unix"
)

// Sync makes everything written to the store's file system before the
// call durable (syncfs), objects written without their own fsync
// included. Callers at once share syncs: a sync already running when
// Sync is called may have missed what the caller wrote, so the caller
// waits for the next one, which serves every caller waiting by then.
func (s *Store) Sync() error {
	return s.syncs.sync(func() error {
		d, err := openDir(s.root)
		if err != nil {
			return fmt.Errorf("syncing the store: %w", err)
		}
		defer unix.Close(d)
		if err := syncfs(d); err != nil {
			return fmt.Errorf("syncing the store: %w", err)
		}
		return nil
	})
}

// Syncs is how many syncs of the file system the store has begun (Sync):
// how much writers of refs shared them.
func (s *Store) Syncs() uint64 {
	s.syncs.mu.Lock()
	defer s.syncs.mu.Unlock()
	return s.syncs.started
}

// syncDir makes dir's entries durable (fsync of the directory).
func syncDir(dir string) error {
	d, err := openDir(dir)
	if err != nil {
		return err
	}
	defer unix.Close(d)
	if err := unix.Fsync(d); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// openDir opens a directory to sync it: a plain descriptor, not an
// *os.File, which tries to make it pollable (three system calls more,
// and a pull syncs a directory an artifact).
func openDir(dir string) (int, error) {
	fd, err := ignoringEINTR(func() (int, error) {
		return unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	})
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	return fd, nil
}

// syncfs is unix.Syncfs; tests count the calls.
var syncfs = unix.Syncfs

// syncer runs a sync for callers that each need one begun after they
// asked: one caller runs it, and every caller that asked while another
// sync was running waits for that one to end and shares the next.
type syncer struct {
	mu sync.Mutex
	// started and ended count the syncs begun and over.
	started, ended uint64
	// running is closed when the sync running ends; nil when none runs.
	running chan struct{}
	// err is how the last sync over ended.
	err error
}

// sync returns once a sync begun after the call has ended, with its
// error (or a later one's).
func (y *syncer) sync(run func() error) error {
	y.mu.Lock()
	defer y.mu.Unlock()
	want := y.started + 1
	for y.ended < want {
		if wait := y.running; wait != nil {
			y.mu.Unlock()
			<-wait
			y.mu.Lock()
			continue
		}
		done := make(chan struct{})
		y.running = done
		y.started++
		n := y.started
		y.mu.Unlock()
		err := run()
		y.mu.Lock()
		y.running = nil
		y.ended, y.err = n, err
		close(done)
	}
	return y.err
}
