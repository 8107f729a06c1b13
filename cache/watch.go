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
//
// A prefix directory made after the watch started is not watched until
// its creation is drained: what is linked into it and removed again
// meanwhile raises no event. So a new directory's watch is added, then
// the directory listed, and the listing replaces whatever the index held
// of it (objectIndex.relist).
type watcher struct {
	mu      sync.Mutex // one drain at a time
	fd      int
	objects string
	// prefixes maps watch descriptors to prefix directories ("" for the
	// objects directory itself).
	prefixes map[int32]string
	buf      []byte
	// lost says why events were missed (the queue overflowed, a watch
	// could not be added): the index can no longer answer alone.
	lost error
}

const (
	dirEvents = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_DELETE | unix.IN_MOVED_FROM |
		unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR
	prefixEvents = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_DELETE | unix.IN_MOVED_FROM
)

// errOverflow: the kernel's event queue overflowed.
var errOverflow = errors.New("inotify's event queue overflowed (fs.inotify.max_queued_events)")

// watch starts watching objects and every prefix directory in it.
func watch(objects string) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watching the store (fs.inotify.max_user_instances): %w", err)
	}
	w := &watcher{fd: fd, objects: objects, prefixes: map[int32]string{}, buf: make([]byte, 64<<10)}
	if err := w.add("", dirEvents); err != nil {
		w.close()
		return nil, err
	}
	fans, err := os.ReadDir(objects)
	if err != nil {
		w.close()
		return nil, err
	}
	for _, f := range fans {
		if f.IsDir() && isPrefix(f.Name()) {
			if err := w.add(f.Name(), prefixEvents); err != nil {
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
		return fmt.Errorf("watching %s (fs.inotify.max_user_watches): %w", filepath.Join(w.objects, prefix), err)
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

// drain applies every queued event to x. It says why, if the index no
// longer follows the disk.
func (w *watcher) drain(x *objectIndex) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.fd >= 0 && w.lost == nil {
		n, err := unix.Read(w.fd, w.buf)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil || n <= 0 {
			w.lost = fmt.Errorf("reading the store's events: %w", err)
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
	switch {
	case w.lost != nil:
		return w.lost
	case w.fd < 0:
		return errors.New("the store's watch is closed")
	}
	return nil
}

// apply is one event. w.mu is held.
func (w *watcher) apply(x *objectIndex, wd int32, mask uint32, name string) {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		w.lost = errOverflow
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
		w.applyDir(x, mask, name)
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

// applyDir is an event on the objects directory itself.
func (w *watcher) applyDir(x *objectIndex, mask uint32, name string) {
	if mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
		w.lost = errors.New("the objects directory was removed or moved")
		return
	}
	if mask&unix.IN_ISDIR == 0 || !isPrefix(name) {
		return
	}
	p := prefixByte(name)
	if mask&(unix.IN_DELETE|unix.IN_MOVED_FROM) != 0 {
		// Removed (empty) or moved away with what it held: its
		// watch, if it had one, must not speak for the name any more.
		for wd, pr := range w.prefixes {
			if pr == name {
				unix.InotifyRmWatch(w.fd, uint32(wd))
				delete(w.prefixes, wd)
			}
		}
		x.relist(p, nil)
		return
	}
	// A new prefix directory: watch it, then list it. Its listing is
	// what it holds now; what the index held of it may have been
	// removed before the watch.
	if err := w.add(name, prefixEvents); err != nil {
		w.lost = err
		return
	}
	objects, err := readFanOut(w.objects, name)
	if err != nil {
		w.lost = fmt.Errorf("listing %s: %w", filepath.Join(w.objects, name), err)
		return
	}
	x.relist(p, objects)
}

// created indexes an object any process (this one too) put in place.
func (w *watcher) created(x *objectIndex, prefix, name string) {
	h := prefix + name
	if !validHash(h) {
		return // a repair's side name, or another file
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(w.objects, prefix, name), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return // gone again: its removal is queued too
	}
	x.add(digest.Digest{Hash: h, Size: st.Size})
}
