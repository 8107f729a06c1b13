package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sys/unix"
)

// watcher keeps an object index exact across processes: inotify on the
// objects directory and each of its 256 prefix directories reports every
// object any process links, renames in or removes. An event is queued by
// the system call that made the change, before it returns, so draining
// the queue before an answer makes the index as current as the disk was
// at that moment.
type watcher struct {
	mu      sync.Mutex // one drain at a time
	fd      int
	objects string
	// prefixes maps watch descriptors to prefix directories ("" for the
	// objects directory itself).
	prefixes map[int32]string
	buf      []byte
	// lost: the queue overflowed, or a watch could not be added: events
	// were missed and the index can no longer answer "absent" alone.
	lost bool
}

const (
	dirEvents    = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_ONLYDIR
	prefixEvents = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_DELETE | unix.IN_MOVED_FROM
)

// watch starts watching objects and every prefix directory in it.
func watch(objects string) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watching the store: %w", err)
	}
	w := &watcher{fd: fd, objects: objects, prefixes: map[int32]string{}, buf: make([]byte, 64<<10)}
	if err := w.add("", dirEvents); err != nil {
		w.close()
		return nil, err
	}
	entries, err := os.ReadDir(objects)
	if err != nil {
		w.close()
		return nil, err
	}
	for _, e := range entries {
		if e.IsDir() && len(e.Name()) == 2 {
			if err := w.add(e.Name(), prefixEvents); err != nil {
				w.close()
				return nil, err
			}
		}
	}
	return w, nil
}

func (w *watcher) add(prefix string, mask uint32) error {
	wd, err := unix.InotifyAddWatch(w.fd, filepath.Join(w.objects, prefix), mask)
	if err != nil {
		return fmt.Errorf("watching %s: %w", filepath.Join(w.objects, prefix), err)
	}
	w.prefixes[int32(wd)] = prefix
	return nil
}

func (w *watcher) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fd >= 0 {
		unix.Close(w.fd)
		w.fd = -1
	}
}

// drain applies every queued event to x. It reports whether the index
// still follows the disk exactly.
func (w *watcher) drain(x *objectIndex) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.fd >= 0 && !w.lost {
		n, err := unix.Read(w.fd, w.buf)
		if errors.Is(err, unix.EAGAIN) || n <= 0 {
			break
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&w.buf[off]))
			nameAt := off + unix.SizeofInotifyEvent
			off = nameAt + int(ev.Len)
			if off > n {
				break
			}
			name := string(w.buf[nameAt:off])
			for len(name) > 0 && name[len(name)-1] == 0 {
				name = name[:len(name)-1]
			}
			w.apply(x, ev.Wd, ev.Mask, name)
		}
	}
	return w.fd >= 0 && !w.lost
}

// apply is one event. w.mu is held.
func (w *watcher) apply(x *objectIndex, wd int32, mask uint32, name string) {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		w.lost = true
		return
	}
	prefix, ok := w.prefixes[wd]
	if !ok {
		return
	}
	if mask&unix.IN_IGNORED != 0 {
		// The directory went (gc may remove an empty one): a new one
		// of the name is an event on the objects directory.
		delete(w.prefixes, wd)
		return
	}
	if prefix == "" {
		if mask&unix.IN_ISDIR != 0 && len(name) == 2 {
			// A new prefix directory: watch it, then take in what was
			// linked into it before the watch.
			if err := w.add(name, prefixEvents); err != nil {
				w.lost = true
				return
			}
			entries, _ := os.ReadDir(filepath.Join(w.objects, name))
			for _, e := range entries {
				w.created(x, name, e.Name())
			}
		}
		return
	}
	switch {
	case mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
		w.created(x, prefix, name)
	case mask&(unix.IN_DELETE|unix.IN_MOVED_FROM) != 0:
		if validHash(prefix + name) {
			x.removeKey(key(prefix + name))
		}
	}
}

// created indexes an object another process (or this one) put in place.
func (w *watcher) created(x *objectIndex, prefix, name string) {
	h := prefix + name
	if !validHash(h) {
		return // a repair's side name, or another file
	}
	if x.hasKey(key(h)) {
		return // this process wrote it, and indexed it then
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(w.objects, prefix, name), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return // gone again: its removal is queued too
	}
	x.add(digest.Digest{Hash: h, Size: st.Size})
}
