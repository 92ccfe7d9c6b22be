package imserver

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/internal/wire"
)

// outFrame is one encoded frame queued for a socket. The bytes are shared by
// every socket the frame goes to and never modified.
type outFrame struct {
	b  []byte
	ts int64 // publish time in unix ms from the frame, 0 if unknown
}

// conn is one WebSocket. Its reader is a goroutine started after the
// handshake (serveConn); a writer goroutine exists only while the queue is
// non-empty, so an idle socket costs one goroutine.
type conn struct {
	srv *Server
	ws  *websocket.Conn
	nc  *batchConn // under ws: one write(2) per batch of frames
	cl  *client    // set once by hub.add

	mu      sync.Mutex
	queue   []outFrame // guarded by mu
	spare   []outFrame // guarded by mu; the writer's last batch, reused
	queued  int        // bytes queued or being written; guarded by mu
	writing bool       // a writer goroutine runs; guarded by mu
	closing bool       // no more frames accepted; guarded by mu
	reason  string     // offline reason if this socket is the client's last; guarded by mu

	lastPing time.Time // touched only by the pinger

	// writeSince is when the current batch write started (unix nanos), 0
	// while idle. The pinger closes a socket whose write takes longer than
	// WriteTimeout; a context deadline per write would cost a timer
	// registration per delivered frame.
	writeSince atomic.Int64
}

// enqueue queues f without blocking. A socket whose queue would pass
// MaxQueueBytes is closed as a slow consumer.
func (c *conn) enqueue(f outFrame) bool {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return false
	}
	// An empty queue takes any frame, so one frame larger than the bound is
	// not mistaken for a slow reader.
	if c.queued > 0 && c.queued+len(f.b) > c.srv.cfg.MaxQueueBytes {
		c.mu.Unlock()
		c.srv.metrics.dropped.Inc()
		c.close(wire.CloseSlowConsumer, "slow consumer", wire.ReasonSlow)
		return false
	}
	c.queue = append(c.queue, f)
	c.queued += len(f.b)
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	if start {
		go c.writeLoop()
	}
	return true
}

func (c *conn) writeLoop() {
	for {
		c.mu.Lock()
		batch := c.queue
		if len(batch) == 0 || c.closing {
			c.writing = false
			c.mu.Unlock()
			return
		}
		c.queue = c.spare[:0]
		c.mu.Unlock()

		n := 0
		var err error
		c.writeSince.Store(time.Now().UnixNano())
		c.nc.begin()
		for _, f := range batch {
			c.nc.appendText(f.b)
			n += len(f.b)
		}
		err = c.nc.end()
		if err == nil {
			for _, f := range batch {
				c.srv.metrics.observeDelivery(f.ts)
			}
		}
		c.writeSince.Store(0)
		clear(batch) // drop references to shared frames
		c.mu.Lock()
		c.queued -= n
		c.spare = batch[:0]
		if err != nil {
			c.writing = false
			c.mu.Unlock()
			c.close(websocket.StatusAbnormalClosure, "", wire.ReasonClosed)
			return
		}
		c.mu.Unlock()
	}
}

// close closes the socket with code once; reason becomes the offline event
// reason if this is the client's last socket. It does not block.
func (c *conn) close(code websocket.StatusCode, msg, reason string) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.closing = true
	c.reason = reason
	c.queue = nil
	c.mu.Unlock()
	go func() {
		if code == websocket.StatusAbnormalClosure {
			_ = c.ws.CloseNow()
			return
		}
		// Close waits for the peer's close frame (up to 5 s inside the
		// library, and CloseNow is a no-op once Close has begun); bound it
		// by closing the TCP connection under the library, which also ends
		// the read loop, so a dead peer cannot hold the socket for long.
		done := make(chan struct{})
		go func() {
			_ = c.ws.Close(code, msg)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			c.closeTCP()
		}
	}()
}

// closeTCP closes the connection under coder/websocket.
func (c *conn) closeTCP() {
	if c.nc != nil {
		_ = c.nc.Conn.Close()
	} else {
		_ = c.ws.CloseNow()
	}
}

// writeStuck reports a batch write running for longer than the write
// timeout.
func (c *conn) writeStuck(now time.Time) bool {
	since := c.writeSince.Load()
	return since != 0 && now.UnixNano()-since > int64(c.srv.cfg.WriteTimeout)
}

// abort drops the socket at once (a write is stuck, so a close frame could
// not be sent either); reason is the offline reason.
func (c *conn) abort(reason string) {
	c.mu.Lock()
	if !c.closing {
		c.closing = true
		c.reason = reason
		c.queue = nil
	}
	c.mu.Unlock()
	c.closeTCP()
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
			return
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return
		}
	}
}
