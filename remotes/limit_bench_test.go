package remotes

import (
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// BenchmarkLimiterRate measures how close a capped connection comes to
// its cap: 2 MiB written over loopback TCP at 4 MiB/s, reported as the
// fraction of the cap reached (of-cap, 1.0 is the cap). Rates belong
// here, not in tests, where a busy machine makes them miss.
func BenchmarkLimiterRate(b *testing.B) {
	const size, capRate = 2 << 20, 4 << 20
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	data := make([]byte, size)
	var total time.Duration
	for i := 0; i < b.N; i++ {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		lc := &limitedConn{Conn: c, limiters: []*rate.Limiter{NewLimiter(capRate)}}
		start := time.Now()
		if _, err := lc.Write(data); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		c.Close()
	}
	b.SetBytes(size)
	b.ReportMetric(float64(size)*float64(b.N)/total.Seconds()/capRate, "of-cap")
}
