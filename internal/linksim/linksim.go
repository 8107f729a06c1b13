package linksim

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Profile is a link: a one-way delay and a rate in bytes per second (0:
// unlimited).
type Profile struct {
	Delay time.Duration
	Rate  float64
}

// Profiles are the links the benchmarks measure.
var Profiles = map[string]Profile{
	"lan":  {Delay: 500 * time.Microsecond, Rate: 1e9 / 8},
	"site": {Delay: 20 * time.Millisecond, Rate: 200e6 / 8},
	"wan":  {Delay: 50 * time.Millisecond, Rate: 50e6 / 8},
}

// chunkBytes is the most a pump reads at once: small enough that a chunk
// takes little of the link, as packets do.
const chunkBytes = 16 << 10

// Link is one simulated path to a backend: every connection accepted on
// it crosses the same two directions.
type Link struct {
	profile Profile
	backend string
	up      direction // client to server
	down    direction // server to client
	// QueueBytes bounds the bytes in flight per connection and direction.
	QueueBytes int
}

// direction is one way of the link: when it is next free to send.
type direction struct {
	mu    sync.Mutex
	free  time.Time
	bytes atomic.Int64 // carried so far
}

// departs reserves the link for n bytes and says when they have left it.
func (d *direction) departs(n int, rate float64) time.Time {
	d.bytes.Add(int64(n))
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if d.free.Before(now) {
		d.free = now
	}
	if rate > 0 {
		d.free = d.free.Add(time.Duration(float64(n) / rate * float64(time.Second)))
	}
	return d.free
}

// New makes a link to backend (host:port) with profile p.
func New(backend string, p Profile) *Link {
	queue := int(p.Rate * 2 * p.Delay.Seconds() * 2) // twice the bandwidth-delay product
	return &Link{profile: p, backend: backend, QueueBytes: max(queue, 256<<10)}
}

// Bytes says how many bytes have crossed the link each way: up (client
// to server) and down.
func (k *Link) Bytes() (up, down int64) { return k.up.bytes.Load(), k.down.bytes.Load() }

// Serve accepts connections on l until it is closed, each forwarded to
// the backend across the link.
func (k *Link) Serve(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go k.forward(c)
	}
}

func (k *Link) forward(client net.Conn) {
	server, err := net.Dial("tcp", k.backend)
	if err != nil {
		client.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); k.pump(client, server, &k.up) }()
	go func() { defer wg.Done(); k.pump(server, client, &k.down) }()
	wg.Wait()
	client.Close()
	server.Close()
}

// packet is a chunk on its way, due at the far end at arrive.
type packet struct {
	data   []byte
	arrive time.Time
}

// pump carries src's bytes to dst across one direction: a reader puts
// chunks on the link as it frees up, a writer delivers each one delay
// after it left. The queue between them holds at most QueueBytes.
func (k *Link) pump(src, dst net.Conn, d *direction) {
	queue := make(chan packet, max(k.QueueBytes/chunkBytes, 4))
	go func() {
		defer close(queue)
		for {
			buf := make([]byte, chunkBytes)
			n, err := src.Read(buf)
			if n > 0 {
				leaves := d.departs(n, k.profile.Rate)
				queue <- packet{data: buf[:n], arrive: leaves.Add(k.profile.Delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for p := range queue {
		if wait := time.Until(p.arrive); wait > 0 {
			time.Sleep(wait)
		}
		if _, err := dst.Write(p.data); err != nil {
			src.Close() // the far side is gone: stop reading
			for range queue {
			}
			return
		}
	}
	// src is done: half-close so the far side sees the end.
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
}
