package imserver

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// attach registers a socket; the caller holds the client's stripe. The first
// socket of a client marks it online in Redis and loads its channels, in one
// script, after it is visible in the hub: a join published meanwhile is then
// either in the loaded set or applied by the join handler.
func (s *Server) attach(cn *conn, rec wire.TokenRecord) {
	c, first := s.hub.add(rec.Client, rec.Meta, cn)
	s.metrics.conns.Inc()
	s.metrics.connects.Inc()
	if !first {
		return
	}
	s.metrics.clients.Inc()
	chans, err := s.markOnline(c)
	if err != nil {
		s.log.Warn("failed to mark client online; will resync", "client", c.id, "err", err)
		s.sub.markDirty()
		return
	}
	if added := s.hub.join(c, chans); len(added) > 0 {
		s.sub.syncTopics(added)
	}
}

// detach removes a socket; the caller holds the client's stripe.
func (s *Server) detach(cn *conn, reason string) {
	last, chans := s.hub.remove(cn)
	s.connCount.Add(-1)
	s.metrics.conns.Dec()
	s.metrics.closes.WithLabelValues(reason).Inc()
	if !last {
		return
	}
	s.metrics.clients.Dec()
	if len(chans) > 0 {
		s.sub.syncTopics(chans)
	}
	if err := s.markOffline(cn.cl.id, cn.cl.meta, s.cfg.NodeID, reason); err != nil {
		s.log.Warn("failed to mark client offline; will resync", "client", cn.cl.id, "err", err)
		s.sub.markDirty()
	}
}

func (s *Server) event(typ, id, meta, node, reason string, conns int) string {
	return string(wire.Event{Type: typ, Client: id, Node: node, Meta: meta, Conns: conns,
		TS: time.Now().UnixMilli(), Reason: reason}.Encode())
}

func (s *Server) markOnline(c *client) ([]string, error) {
	ctx, cancel := s.redisCtx()
	defer cancel()
	n := s.names
	return s.onlineScript.Exec(ctx, s.rc,
		[]string{n.Online(), n.NodeClients(s.cfg.NodeID), n.ClientChans(c.id), n.EventStream()},
		[]string{c.id, s.cfg.NodeID, s.event(wire.EventOnline, c.id, c.meta, s.cfg.NodeID, "", 1),
			n.EventChannel(), strconv.Itoa(s.cfg.EventStreamMaxLen)},
	).AsStrSlice()
}

// markOffline runs the offline script for a client of node (this node, or a
// dead one being reaped).
func (s *Server) markOffline(id, meta, node, reason string) error {
	ctx, cancel := s.redisCtx()
	defer cancel()
	n := s.names
	err := s.offlineScript.Exec(ctx, s.rc,
		[]string{n.Online(), n.NodeClients(node), n.ClientChans(id), n.EventStream(), n.Chans()},
		[]string{id, node, s.event(wire.EventOffline, id, meta, node, reason, 0),
			n.EventChannel(), strconv.Itoa(s.cfg.EventStreamMaxLen), n.ChanMembers("")},
	).Error()
	if err != nil {
		s.metrics.redisErrs.Inc()
	}
	return err
}

// resync rewrites this node's presence and channel membership from memory
// after Redis came back (it may have restarted empty) or after a failed
// write. Clients missing from Redis get an online event again.
func (s *Server) resync(ctx context.Context) error {
	n := s.names
	for _, c := range s.hub.clientList() {
		mu := s.stripe(c.id)
		mu.Lock()
		c.mu.RLock()
		alive := len(c.conns) > 0
		chans := make([]string, 0, len(c.chans))
		for ch := range c.chans {
			chans = append(chans, ch)
		}
		c.mu.RUnlock()
		var err error
		if alive {
			var inRedis []string
			inRedis, err = s.markOnline(c)
			if err == nil {
				if added := s.hub.join(c, inRedis); len(added) > 0 {
					s.sub.syncTopics(added)
				}
				cmds := make(rueidis.Commands, 0, 3*len(chans))
				for _, ch := range chans {
					cmds = append(cmds,
						s.rc.B().Sadd().Key(n.ChanMembers(ch)).Member(c.id).Build(),
						s.rc.B().Sadd().Key(n.ClientChans(c.id)).Member(ch).Build(),
						s.rc.B().Sadd().Key(n.Chans()).Member(ch).Build())
				}
				for _, r := range s.rc.DoMulti(ctx, cmds...) {
					if err = r.Error(); err != nil {
						break
					}
				}
			}
		}
		mu.Unlock()
		if err != nil {
			return err
		}
	}
	// Sockets that closed while Redis was down left entries behind.
	ids, err := s.rc.Do(ctx, s.rc.B().Smembers().Key(n.NodeClients(s.cfg.NodeID)).Build()).AsStrSlice()
	if err != nil {
		return err
	}
	for _, id := range ids {
		mu := s.stripe(id)
		mu.Lock()
		if s.hub.get(id) == nil {
			err = s.markOffline(id, "", s.cfg.NodeID, wire.ReasonClosed)
		}
		mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// applyJoin and applyLeave mirror a JoinChan/LeaveChan that imhelper already
// wrote to Redis into local memory and subscriptions. They run on a pub/sub
// worker, which must never wait for a Redis reply that the same pub/sub
// reader has to deliver, so the (un)subscribe runs in its own goroutine;
// syncTopics converges on the hub's state whatever the order.
func (s *Server) applyJoin(id string, chans []string) {
	mu := s.stripe(id)
	mu.Lock()
	defer mu.Unlock()
	if c := s.hub.get(id); c != nil {
		if added := s.hub.join(c, chans); len(added) > 0 {
			go s.sub.syncTopics(added)
		}
	}
}

func (s *Server) applyLeave(id string, chans []string) {
	mu := s.stripe(id)
	mu.Lock()
	defer mu.Unlock()
	if c := s.hub.get(id); c != nil {
		if emptied := s.hub.leave(c, chans); len(emptied) > 0 {
			go s.sub.syncTopics(emptied)
		}
	}
}

// closeClient closes every socket of a local client with code.
func (s *Server) closeClient(id string, code int, msg, reason string) {
	if c := s.hub.get(id); c != nil {
		for _, cn := range c.connList() {
			cn.close(websocketCode(code), msg, reason)
		}
	}
}
