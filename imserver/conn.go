package imserver

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/internal/wire"
)

// conn is one WebSocket. Its reader is a goroutine started after the
// handshake (serveConn); its writes all go through w.
type conn struct {
	srv *Server
	ws  *websocket.Conn
	w   *sockWriter
	cl  *client // set once by hub.add

	mu      sync.Mutex
	closing bool   // close or abort began; guarded by mu
	reason  string // offline reason if this socket is the client's last; guarded by mu

	lastPing time.Time // touched only by the heartbeat

	inbound inboundBudget // touched only by the reader goroutine

	// peerNormal is set when the client closed with 1000: a deliberate
	// sign-off, which ends its presence at once (no offline grace).
	peerNormal atomic.Bool

	hist socketStreams // its place in its history streams (recovery.go)
}

// inboundBudget is a token bucket over every frame a client sends (data,
// ping, pong), refilled at the configured rate and holding two seconds of
// it. The broker is push-only: a client that sends more is broken or
// hostile, and 10 sockets flooding 1-byte frames or pings cost 0.6–0.8 of a
// core before there was a bound.
type inboundBudget struct {
	tokens float64
	last   int64 // unix nanoseconds of the last refill; 0 before the first frame
}

// take spends one frame of the budget at time now; false when it is spent.
func (b *inboundBudget) take(rate float64, now int64) bool {
	burst := 2 * rate
	if b.last == 0 {
		b.tokens = burst
	} else {
		b.tokens = min(burst, b.tokens+float64(now-b.last)/float64(time.Second)*rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// inboundFrame counts one frame from the client. Over the budget it closes
// the socket with 1008 (once) and returns false. It runs on the reader
// goroutine: coder/websocket calls the ping and pong hooks from the read.
func (c *conn) inboundFrame() bool {
	rate := c.srv.cfg.InboundRate
	if rate < 0 || c.inbound.take(float64(rate), time.Now().UnixNano()) {
		return true
	}
	if !c.isClosing() {
		c.close(websocket.StatusPolicyViolation, "too many frames from the client", wire.ReasonInbound)
	}
	return false
}

// newSockWriter builds the writer of a socket the server is accepting.
func (s *Server) newSockWriter(nc net.Conn) *sockWriter {
	// The HTTP server's ReadTimeout left a read deadline on the connection;
	// a WebSocket lives until it closes (the heartbeat finds dead peers).
	_ = nc.SetReadDeadline(time.Time{})
	limitUnsent(nc, sockUnsent)
	return &sockWriter{Conn: nc, raw: newRawWriter(nc), behind: &s.behind, metrics: s.metrics, maxQueue: s.cfg.MaxQueueBytes, spawn: s.startGoroutine}
}

// newConn ties a socket's writer to it once the handshake is done.
func (s *Server) newConn(ws *websocket.Conn, w *sockWriter) *conn {
	cn := &conn{srv: s, ws: ws, w: w}
	// Held until its first fill (handleWS) has replayed what it missed:
	// its first frame is the recovered frame.
	cn.hist.holding.Store(true)
	cn.hist.filling = true
	w.onSlow = func() { cn.close(wire.CloseSlowConsumer, "slow consumer", wire.ReasonSlow) }
	w.onBroken = func() { cn.close(websocket.StatusAbnormalClosure, "", wire.ReasonClosed) }
	w.start()
	return cn
}

// enqueue queues a data frame without blocking.
func (c *conn) enqueue(f outFrame) bool { return c.w.enqueue(f) }

// close closes the socket with code once; reason becomes the offline event
// reason if this is the client's last socket. It does not block. Frames
// queued before it are still written ahead of the close frame, except for
// a slow consumer, whose backlog is dropped.
func (c *conn) close(code websocket.StatusCode, msg, reason string) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.closing = true
	c.reason = reason
	c.mu.Unlock()
	c.w.stopData(reason == wire.ReasonSlow)
	started := c.srv.startGoroutine(func() {
		if code == websocket.StatusAbnormalClosure {
			_ = c.ws.CloseNow()
			return
		}
		// Close waits for the peer's close frame (up to 5 s inside the
		// library, and CloseNow is a no-op once Close has begun); bound it
		// by closing the TCP connection under the library, which fails
		// that read and ends the read loop, so a dead peer cannot hold the
		// socket for long. A close frame already written still reaches a
		// peer that goes on reading (the kernel sends it, then FIN); one
		// still queued is lost, which is why the writer keeps what can be
		// ahead of it small (writeChunk, sockUnsent).
		t := time.AfterFunc(2*time.Second, c.w.closeTCP)
		_ = c.ws.Close(code, msg)
		t.Stop()
	})
	if !started {
		c.w.closeTCP()
	}
}

// abort drops the socket at once (a write is stuck, so a close frame could
// not be sent either); reason is the offline reason.
func (c *conn) abort(reason string) {
	c.mu.Lock()
	if !c.closing {
		c.closing = true
		c.reason = reason
	}
	c.mu.Unlock()
	c.w.stopData(true)
	c.w.closeTCP()
}

// isClosing reports whether close or abort has begun.
func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

func (c *conn) offlineReason() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reason == "" {
		return wire.ReasonClosed
	}
	return c.reason
}

// readLoop discards client frames until the socket fails or closes. The
// broker is push-only; reading keeps pings, pongs and closes flowing.
func (c *conn) readLoop() {
	for {
		// No context: a cancellable one would register a callback per read
		// (memory held by every idle socket). Closing the socket ends it.
		_, r, err := c.ws.Reader(context.Background())
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
				c.peerNormal.Store(true)
			}
			return
		}
		c.inboundFrame()
		if _, err := io.Copy(io.Discard, r); err != nil {
			return
		}
	}
}
