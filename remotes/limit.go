package remotes

import (
	"context"
	"net"
	"strings"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
)

// limitBurst is the most bytes a connection reads or writes before it
// waits on its limiters: small enough that a cap holds within a fraction
// of a second, large enough that waiting costs little.
const limitBurst = 64 << 10

// NewLimiter makes a limiter of bytesPerSecond for WithLimiters; one
// limiter shared by several caches caps their sum.
func NewLimiter(bytesPerSecond int64) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(bytesPerSecond), limitBurst)
}

// WithLimiters caps the bytes this cache's connection reads and writes
// (TLS and gRPC framing included, as on the wire) by every limiter given.
func WithLimiters(ls ...*rate.Limiter) Option {
	return func(o *options) { o.limiters = append(o.limiters, ls...) }
}

// limitedDialer dials as gRPC would and wraps the connection in the
// limiters.
func limitedDialer(target string, ls []*rate.Limiter) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		network := "tcp"
		if path, ok := strings.CutPrefix(target, "unix:"); ok {
			network, addr = "unix", path
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &limitedConn{Conn: c, limiters: ls}, nil
	})
}

// limitedConn waits on its limiters for every chunk it reads or writes.
type limitedConn struct {
	net.Conn
	limiters []*rate.Limiter
}

func (c *limitedConn) wait(n int) error {
	for _, l := range c.limiters {
		if err := l.WaitN(context.Background(), n); err != nil {
			return err
		}
	}
	return nil
}

func (c *limitedConn) Read(p []byte) (int, error) {
	if len(p) > limitBurst {
		p = p[:limitBurst]
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		if werr := c.wait(n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

func (c *limitedConn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), limitBurst)]
		if err := c.wait(len(chunk)); err != nil {
			return written, err
		}
		n, err := c.Conn.Write(chunk)
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}
