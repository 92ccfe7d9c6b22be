package imserver

import (
	"context"
	"errors"
	"time"

	"github.com/imbroker/imbroker/internal/wire"
)

// pingLoop walks every socket once per heartbeatTick from one goroutine:
// it pings each socket whose PingInterval has passed (the pings of sockets
// that connected together are spread by a random phase set at accept) and
// drops sockets whose write is stuck. One loop replaces a timer per socket.
func (s *Server) pingLoop(ctx context.Context) {
	t := time.NewTicker(s.heartbeatTick())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.heartbeat(now)
		}
	}
}

// heartbeatTick is how often the ping loop walks the sockets: a fifth of the
// shorter of the ping interval and the write timeout, between 100 ms and
// 2 s (2 s with the defaults). Each pass touches every socket, which costs
// cache misses, so no more often than the timeouts need.
func (s *Server) heartbeatTick() time.Duration {
	return min(max(min(s.cfg.PingInterval, s.cfg.WriteTimeout)/5, 100*time.Millisecond), 2*time.Second)
}

// heartbeat is one pass of the ping loop over every socket.
func (s *Server) heartbeat(now time.Time) {
	s.hub.each(func(c *client) {
		c.mu.RLock()
		for _, cn := range c.conns {
			if cn.w.writeStuck(now, s.cfg.WriteTimeout) {
				cn.abort(wire.ReasonSlow) // does not block
				continue
			}
			if now.Sub(cn.lastPing) < s.cfg.PingInterval {
				continue
			}
			cn.lastPing = now
			s.startGoroutine(func() { s.ping(cn) })
		}
		c.mu.RUnlock()
	})
}

// ping waits for one pong; a socket that does not answer within
// PongTimeout is closed.
func (s *Server) ping(cn *conn) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.PongTimeout)
	defer cancel()
	if err := cn.ws.Ping(ctx); errors.Is(err, context.DeadlineExceeded) && !cn.isClosing() {
		cn.close(wire.CloseNoPong, "ping timeout", wire.ReasonTimeout)
	}
}
