package linksim

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// echo starts a server on loopback that sends back what it reads.
func echo(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return l.Addr().String()
}

func start(t *testing.T, backend string, p Profile) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go New(backend, p).Serve(l)
	return l.Addr().String()
}

// A round trip takes two delays; the bytes come back unchanged.
func TestDelay(t *testing.T) {
	addr := start(t, echo(t), Profile{Delay: 20 * time.Millisecond})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 3; i++ {
		start := time.Now()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("read %q, %v", buf, err)
		}
		if rtt := time.Since(start); rtt < 40*time.Millisecond || rtt > 200*time.Millisecond {
			t.Errorf("round trip %s; want about 40ms", rtt)
		}
	}
}

// Four connections together get the link's rate, not four times it, and
// every byte arrives in order.
func TestSharedRate(t *testing.T) {
	const rate, each = 8 << 20, 2 << 20 // 8 MiB/s; 2 MiB per connection
	addr := start(t, echo(t), Profile{Delay: time.Millisecond, Rate: rate})
	data := make([]byte, each)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	begin := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			go c.Write(data)
			got := make([]byte, each)
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, data) {
				t.Errorf("echoed bytes differ (%v)", err)
			}
		}()
	}
	wg.Wait()
	// 8 MiB each way over one 8 MiB/s link: about a second (up and down
	// overlap, each direction has the rate).
	took := time.Since(begin)
	if took < 900*time.Millisecond || took > 3*time.Second {
		t.Errorf("4 x 2 MiB echoed in %s; want about 1s at 8 MiB/s shared", took)
	}
}
