package server

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
)

// uploadIdle is how long an interrupted upload waits to be resumed.
const uploadIdle = 15 * time.Minute

// UploadLimits bound ByteStream uploads in progress. An active upload (a
// stream writing it) holds a file descriptor; a parked one (interrupted,
// kept for a resume) holds only its bytes on disk. Past the active limits
// a new upload is refused with RESOURCE_EXHAUSTED; past the parked ones
// the oldest parked uploads are discarded (a client that comes back starts
// again, as ByteStream allows).
type UploadLimits struct {
	// Active bounds the streams writing at once, overall and per peer (a
	// client address).
	Active, PeerActive int
	// Parked bounds interrupted uploads kept for a resume, overall and per
	// peer, and the bytes they hold overall.
	Parked, PeerParked int
	ParkedBytes        int64
}

// DefaultUploadLimits are the bounds serve runs with: 1024 active uploads
// (256 per peer), 4096 parked (1024 per peer) holding at most 4 GiB, or a
// quarter of the quota when there is one.
func DefaultUploadLimits(quota int64) UploadLimits {
	l := UploadLimits{Active: 1024, PeerActive: 256, Parked: 4096, PeerParked: 1024, ParkedBytes: 4 << 30}
	if quota > 0 {
		// Parked bytes are not objects yet, but they are disk the quota
		// is meant to bound.
		l.ParkedBytes = min(l.ParkedBytes, quota/4)
	}
	return l
}

// upload is a ByteStream write in progress, kept for resumption.
type upload struct {
	d    digest.Digest
	peer string
	// w is set while a stream writes the upload, parked while none does.
	w         *cache.BlobWriter
	parked    cache.Parked
	committed atomic.Int64 // bytes written, readable by QueryWriteStatus
	// last is when the upload was parked; read and written under the
	// table's lock.
	last time.Time
}

// uploadTable holds the uploads in progress, by resource name.
type uploadTable struct {
	store  *cache.Store
	limits UploadLimits

	mu          sync.Mutex
	byName      map[string]*upload
	active      map[string]int // per peer
	parked      map[string]int // per peer
	nActive     int
	nParked     int
	parkedBytes int64
}

func newUploadTable(store *cache.Store, limits UploadLimits) *uploadTable {
	return &uploadTable{store: store, limits: limits, byName: map[string]*upload{}, active: map[string]int{}, parked: map[string]int{}}
}

// peerOf names a client by its address without the port.
func peerOf(addr net.Addr) string {
	if addr == nil {
		return "?"
	}
	if host, _, err := net.SplitHostPort(addr.String()); err == nil {
		return host
	}
	return addr.String()
}

// clientOf names the client of a call by its connection (address and
// port): a gRPC client keeps one, so the quota bounds each client's loose
// uploads by it.
func clientOf(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// start finds or creates the upload for a resource name and makes it
// active for the calling stream. Offset 0 restarts it; any other offset
// must continue a parked one.
func (t *uploadTable) start(name string, d digest.Digest, off int64, peer string) (*upload, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweep(time.Now())
	u := t.byName[name]
	if u != nil && u.w != nil {
		return nil, status.Errorf(codes.Aborted, "%s is being written by another stream", name)
	}
	if t.nActive >= t.limits.Active || t.active[peer] >= t.limits.PeerActive {
		return nil, status.Errorf(codes.ResourceExhausted, "too many uploads in progress (%d, %d from %s): try again later", t.nActive, t.active[peer], peer)
	}
	if u != nil && off == 0 && u.parked.Written() > 0 {
		t.discard(name, u)
		u = nil
	}
	if u == nil {
		if off != 0 {
			return nil, status.Errorf(codes.InvalidArgument, "write_offset %d for %s, which has no upload in progress", off, name)
		}
		w, err := t.store.NewWriter(d)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "starting upload: %v", err)
		}
		u = &upload{d: d, peer: peer, w: w}
		t.byName[name] = u
	} else {
		w, err := t.store.ResumeWriter(u.parked)
		if err != nil {
			t.discard(name, u)
			return nil, status.Errorf(codes.NotFound, "the upload of %s can no longer be resumed: start again (%v)", name, err)
		}
		t.unpark(u)
		u.w = w
	}
	t.nActive++
	t.active[peer]++
	return u, nil
}

// park keeps an interrupted upload for a resume, without a file open,
// and discards the oldest parked uploads past the limits.
func (t *uploadTable) park(name string, u *upload) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.deactivate(u)
	p, err := u.w.Park()
	u.w = nil
	if err != nil {
		delete(t.byName, name)
		return
	}
	u.parked, u.last = p, time.Now()
	t.nParked++
	t.parked[u.peer]++
	t.parkedBytes += p.Written()
	for t.nParked > t.limits.Parked || t.parked[u.peer] > t.limits.PeerParked || t.parkedBytes > t.limits.ParkedBytes {
		if !t.discardOldest(u.peer) {
			break
		}
	}
}

// end forgets an active upload: committed, or failed and aborted.
func (t *uploadTable) end(name string, u *upload, abort bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.deactivate(u)
	if abort {
		u.w.Abort()
	}
	u.w = nil
	if t.byName[name] == u {
		delete(t.byName, name)
	}
}

// parkedSize is the bytes parked uploads hold on disk.
func (t *uploadTable) parkedSize() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.parkedBytes
}

// counts are the uploads active and parked, and the bytes parked ones
// hold.
func (t *uploadTable) counts() (active, parked int, parkedBytes int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nActive, t.nParked, t.parkedBytes
}

// committed is how much of an upload the server holds; ok is false when
// there is none.
func (t *uploadTable) committed(name string) (int64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	u := t.byName[name]
	if u == nil {
		return 0, false
	}
	return u.committed.Load(), true
}

// closeAll discards every upload (the server is stopping).
func (t *uploadTable) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for name, u := range t.byName {
		if u.w != nil {
			u.w.Abort()
			delete(t.byName, name)
		} else {
			t.discard(name, u)
		}
	}
}

// sweep discards parked uploads idle for longer than uploadIdle.
func (t *uploadTable) sweep(now time.Time) {
	for name, u := range t.byName {
		if u.w == nil && now.Sub(u.last) > uploadIdle {
			t.discard(name, u)
		}
	}
}

// discardOldest discards the longest-parked upload, of peer when it is
// over its own limit; false when there is none.
func (t *uploadTable) discardOldest(peer string) bool {
	onlyPeer := t.parked[peer] > t.limits.PeerParked
	var oldest *upload
	var oldestName string
	for name, u := range t.byName {
		if u.w != nil || onlyPeer && u.peer != peer {
			continue
		}
		if oldest == nil || u.last.Before(oldest.last) {
			oldest, oldestName = u, name
		}
	}
	if oldest == nil {
		return false
	}
	t.discard(oldestName, oldest)
	return true
}

// discard drops a parked upload and its bytes.
func (t *uploadTable) discard(name string, u *upload) {
	u.parked.Discard()
	t.unpark(u)
	delete(t.byName, name)
}

func (t *uploadTable) unpark(u *upload) {
	t.nParked--
	t.parkedBytes -= u.parked.Written()
	u.parked = cache.Parked{}
	decr(t.parked, u.peer)
}

func (t *uploadTable) deactivate(u *upload) {
	t.nActive--
	decr(t.active, u.peer)
}

func decr(m map[string]int, k string) {
	if m[k]--; m[k] <= 0 {
		delete(m, k)
	}
}
