package imserver

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/imbroker/imbroker/internal/registry"
	"github.com/imbroker/imbroker/internal/wire"
)

// register writes or refreshes the node's lease; while draining it keeps
// the lease with the draining mark, and after unregister it does nothing.
func (s *Server) register(ctx context.Context) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	if s.unregistered {
		return
	}
	draining := s.draining.Load()
	info, _ := json.Marshal(wire.NodeInfo{ID: s.cfg.NodeID, URL: s.cfg.PublicURL, Started: s.started, Draining: draining})
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout)
	defer cancel()
	n := s.names
	res := s.rc.DoMulti(ctx,
		s.rc.B().Exists().Key(n.NodeKey(s.cfg.NodeID)).Build(),
		s.rc.B().Set().Key(n.NodeKey(s.cfg.NodeID)).Value(string(info)).Px(s.cfg.LeaseTTL).Build(),
		s.rc.B().Sadd().Key(n.NodeSet()).Member(s.cfg.NodeID).Build())
	for _, r := range res {
		if err := r.Error(); err != nil {
			if s.registered.Swap(false) {
				s.log.Warn("lost registry lease refresh", "err", err)
			}
			s.metrics.redisErrs.Inc()
			return
		}
	}
	// A lease that had lapsed while we held it means a survivor may have
	// reaped our clients: announce them again.
	if existed, _ := res[0].AsInt64(); existed == 0 && s.everRegistered.Swap(true) && !draining {
		s.log.Warn("registry lease had lapsed; resyncing presence")
		s.sub.markDirty()
	}
	s.registered.Store(true)
}

// unregister ends the node's registration for good. With clean set (every
// client's presence was removed) it deletes the lease and leaves the node
// set; otherwise it only stops refreshing, so the lease lapses and a
// survivor reaps what is left.
func (s *Server) unregister(clean bool) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	s.unregistered = true
	s.registered.Store(false)
	if !clean {
		s.log.Warn("presence not fully cleaned; leaving it for a survivor to reap", "node", s.cfg.NodeID)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RedisTimeout)
	defer cancel()
	n := s.names
	s.rc.DoMulti(ctx,
		s.rc.B().Srem().Key(n.NodeSet()).Member(s.cfg.NodeID).Build(),
		s.rc.B().Del().Key(n.NodeKey(s.cfg.NodeID)).Build())
}

// registryLoop refreshes the lease, reads the live nodes, reaps dead ones and
// moves clients whose owner changed.
func (s *Server) registryLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		s.refreshNodes(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.register(ctx)
			s.sub.resyncIfDirty(ctx)
		}
	}
}

func (s *Server) refreshNodes(ctx context.Context) {
	if s.draining.Load() {
		return
	}
	rctx, cancel := s.redisCtx()
	live, dead, err := registry.Read(rctx, s.rc, s.names)
	cancel()
	if err != nil {
		s.metrics.redisErrs.Inc()
		return
	}
	for _, d := range dead {
		if d != s.cfg.NodeID && s.claimReap(ctx, d) {
			// Off the registry loop: a large reap must not delay our own
			// lease refresh.
			s.loops.Add(1)
			go func() { defer s.loops.Done(); s.reap(d) }()
		}
	}
	ids := []string{s.cfg.NodeID}
	for _, ni := range live {
		if ni.ID != s.cfg.NodeID {
			ids = append(ids, ni.ID)
		}
	}
	slices.Sort(ids)
	s.nodesMu.Lock()
	changed := !slices.Equal(ids, s.nodes)
	s.nodes = ids
	s.nodesMu.Unlock()
	if changed {
		s.log.Info("node set changed", "nodes", ids)
		s.scheduleMoves()
	}
}

// claimReap makes sure exactly one survivor cleans a dead node.
func (s *Server) claimReap(ctx context.Context, node string) bool {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout)
	defer cancel()
	err := s.rc.Do(ctx, s.rc.B().Set().Key(s.names.ReapLock(node)).Value(s.cfg.NodeID).Nx().Px(time.Minute).Build()).Error()
	return err == nil // a nil reply (lock held elsewhere) is an error here
}

// reap cleans the presence of a dead node (or of this node's previous run):
// every client listed for it goes offline with reason node_lost, unless it
// is by now online elsewhere.
func (s *Server) reap(node string) {
	ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
	defer cancel()
	n := s.names
	cursor := uint64(0)
	count := 0
	for {
		e, err := s.rc.Do(ctx, s.rc.B().Sscan().Key(n.NodeClients(node)).Cursor(cursor).Count(500).Build()).AsScanEntry()
		if err != nil {
			s.log.Warn("reap failed", "node", node, "err", err)
			return
		}
		for _, id := range e.Elements {
			_, err := s.markOffline(id, "", node, wire.ReasonNodeLost, node != s.cfg.NodeID)
			if errors.Is(err, errNodeBack) {
				s.log.Info("reap stopped: the node is back", "node", node, "clients", count)
				s.rc.Do(ctx, s.rc.B().Del().Key(n.ReapLock(node)).Build())
				return
			}
			if err != nil {
				s.log.Warn("reap failed", "node", node, "err", err)
				return
			}
			count++
		}
		if cursor = e.Cursor; cursor == 0 {
			break
		}
	}
	// Remove the node unless it came back meanwhile, and release the claim,
	// so that it can be reaped again should it return and die within the
	// claim's lifetime. (A failed reap keeps the claim until it expires,
	// then another survivor retries.)
	if err := s.reapDoneScript.Exec(ctx, s.rc,
		[]string{n.NodeKey(node), n.NodeClients(node), n.NodeSet(), n.ReapLock(node)}, []string{node}).Error(); err != nil {
		s.log.Warn("reap cleanup failed", "node", node, "err", err)
	}
	if count > 0 || node != s.cfg.NodeID {
		s.log.Info("reaped node", "node", node, "clients", count)
	}
}

// scheduleMoves closes, spread over MoveWindow, every local client whose
// owner is now another node, so that routing stays exact.
func (s *Server) scheduleMoves() {
	nodes := s.liveNodes()
	for _, c := range s.hub.clientList() {
		if wire.Owner(c.id, nodes) != s.cfg.NodeID {
			s.moveLater(c.id, 0)
		}
	}
}

// pingLoop pings every socket once per PingInterval from one goroutine,
// spreading the pings over the interval (a ping waits for its pong in a
// short-lived goroutine), and drops sockets whose write is stuck. One loop
// over all sockets a second replaces a timer per socket.
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
			if cn.writeStuck(now) {
				go cn.abort(wire.ReasonSlow)
				continue
			}
			if now.Sub(cn.lastPing) < s.cfg.PingInterval {
				continue
			}
			cn.lastPing = now
			go s.ping(cn)
		}
		c.mu.RUnlock()
	})
}

func (s *Server) ping(cn *conn) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PongTimeout)
	defer cancel()
	if err := cn.ws.Ping(ctx); errors.Is(err, context.DeadlineExceeded) && !cn.isClosing() {
		cn.close(wire.CloseNoPong, "ping timeout", wire.ReasonTimeout)
	}
}
