package imserver

import (
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// fdGuard is the WebSocket listener's guard against running out of file
// descriptors. Every socket is one descriptor; at the process limit accept
// fails with EMFILE, the kernel queues new connections unanswered, and the
// admin listener and Redis reconnects fail too. So once the listener's own
// connections reach the limit minus a reserve, a new connection is answered
// at once with 503 (reason "fds") and closed: the client learns why, and the
// reserve keeps /readyz, /metrics and Redis working.
type fdGuard struct {
	net.Listener
	max     int64 // connections allowed on this listener
	open    atomic.Int64
	refused func() // counts a refusal
	tls     bool   // under TLS a plain-text answer would be noise: just close
}

// fdReserve is what the guard leaves for everything but client sockets:
// Redis connections, the admin listener and its scrapes, files.
func fdReserve(limit int64) int64 { return max(64, limit/20) }

func newFDGuard(ln net.Listener, tls bool, refused func()) *fdGuard {
	g := &fdGuard{Listener: ln, max: -1, refused: refused, tls: tls}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < 1<<40 {
		g.max = int64(rl.Cur) - fdReserve(int64(rl.Cur))
	}
	return g
}

// fdRefusal is the whole answer to a connection over the limit, in the
// shape of every other refusal (accept.go).
var fdRefusal = func() []byte {
	body := `{"error":"node is out of file descriptors","reason":"fds"}`
	return []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}()

func (g *fdGuard) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if g.max >= 0 && g.open.Load() >= g.max {
			g.refused()
			if !g.tls {
				// A fresh socket's send buffer takes these bytes at once;
				// the deadline only guards against the impossible.
				_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				_, _ = c.Write(fdRefusal)
			}
			_ = c.Close()
			continue
		}
		g.open.Add(1)
		return &guardedConn{Conn: c, g: g}, nil
	}
}

// guardedConn gives its descriptor back to the guard when closed, however
// it is closed (by net/http, after a hijack, or under TLS).
type guardedConn struct {
	net.Conn
	g    *fdGuard
	once sync.Once
}

// NetConn is the accepted connection, for socket options (limitUnsent).
func (c *guardedConn) NetConn() net.Conn { return c.Conn }

func (c *guardedConn) Close() error {
	c.once.Do(func() { c.g.open.Add(-1) })
	return c.Conn.Close()
}
