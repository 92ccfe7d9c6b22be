package imserver

import (
	"context"
	"slices"
	"time"

	"github.com/imbroker/imbroker/internal/store"
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
	info := wire.NodeInfo{ID: s.cfg.NodeID, URL: s.cfg.PublicURL, Started: s.started, Draining: draining, Proto: wire.NodeMsgVersion}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout)
	defer cancel()
	renewed, err := s.st.WriteLease(ctx, info, s.cfg.LeaseTTL)
	if err != nil {
		if s.registered.Swap(false) {
			s.log.Warn("lost registry lease refresh", "err", err)
		}
		s.metrics.redisErrs.Inc()
		return
	}
	// A lease that had lapsed while we held it means a survivor may have
	// reaped our clients: announce them again.
	if !renewed && s.everRegistered.Swap(true) && !draining {
		s.log.Warn("registry lease had lapsed; resyncing presence")
		s.markDirty()
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
	if err := s.st.DeleteLease(ctx, s.cfg.NodeID); err != nil {
		s.log.Warn("failed to leave the registry; the lease will lapse", "err", err)
	}
}

// registryLoop refreshes the lease every LeaseTTL/3, reads the live nodes,
// reaps dead ones and moves clients whose owner changed.
func (s *Server) registryLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		s.refreshNodes(ctx)
		s.checkRedisMemory(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.register(ctx)
			s.resyncIfDirty(ctx)
		}
	}
}

// checkRedisMemory reads Redis' memory limit and policy. At maxmemory the
// node keeps its sockets, its lease (write_lease.lua may run at OOM) and
// its readiness, but refuses new connections, whose presence it could not
// write; with a policy that may evict presence and membership (allkeys-*)
// it reports not ready, so the misconfiguration cannot go unnoticed. A
// Redis that does not answer INFO memory leaves both as they were.
func (s *Server) checkRedisMemory(ctx context.Context) {
	rctx, cancel := s.redisCtx()
	m, err := s.st.Memory(rctx, s.cfg.NodeID)
	cancel()
	if err != nil {
		return
	}
	s.setRedisFull(m.Full(), "used", m.Used, "maxmemory", m.Max, "policy", m.Policy)
	if unsafe := m.EvictsBrokerKeys(); s.redisUnsafe.Swap(unsafe) != unsafe {
		if unsafe {
			s.log.Error("redis maxmemory-policy can evict presence and channel membership: reporting not ready; set maxmemory-policy to noeviction or a volatile-* policy", "policy", m.Policy)
		} else {
			s.log.Info("redis maxmemory-policy is safe again", "policy", m.Policy)
		}
	}
}

// setRedisFull records whether Redis refuses writes, from checkRedisMemory
// or from a write refused with OOM, and logs a change with attrs.
func (s *Server) setRedisFull(full bool, attrs ...any) {
	if s.redisFull.Swap(full) == full {
		return
	}
	if full {
		s.log.Error("redis is at maxmemory: refusing new connections until it has room", attrs...)
		return
	}
	s.log.Info("redis has room again: accepting connections", attrs...)
	s.markDirty() // writes refused meanwhile
}

func (s *Server) refreshNodes(ctx context.Context) {
	if s.draining.Load() {
		return
	}
	rctx, cancel := s.redisCtx()
	live, dead, err := s.st.Nodes(rctx)
	cancel()
	if err != nil {
		s.metrics.redisErrs.Inc()
		return
	}
	for _, d := range dead {
		if d != s.cfg.NodeID && s.claimReap(ctx, d) {
			// Off the registry loop: a large reap must not delay our own
			// lease refresh.
			s.startGoroutine(func() { s.reap(d) })
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
	s.metrics.nodes.Set(float64(len(ids)))
	s.peerVersion.Store(int64(wire.CommonVersion(live)))
	if changed {
		s.noteViewChange()
		s.log.Info("node set changed", "nodes", ids)
		s.scheduleMoves()
	}
}

// claimReap makes sure exactly one survivor cleans a dead node.
func (s *Server) claimReap(ctx context.Context, node string) bool {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout)
	defer cancel()
	ok, err := s.st.ClaimReap(ctx, node, s.cfg.NodeID, time.Minute+max(s.cfg.OfflineGrace, 0))
	if err != nil {
		s.metrics.redisErrs.Inc()
	}
	return ok
}

// reap cleans the presence of a dead node (or of this node's previous run):
// every client listed for it goes offline with reason node_lost, unless it
// is by now online elsewhere. A dead node's clients first get the offline
// grace, as any client whose socket closed does: one that reconnects to a
// survivor within it keeps its rooms and produces no offline/online pair.
func (s *Server) reap(node string) {
	if node != s.cfg.NodeID && s.cfg.OfflineGrace > 0 {
		t := time.NewTimer(s.cfg.OfflineGrace)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			return // the claim lapses; another survivor reaps
		}
	}
	ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
	defer cancel()
	count := 0
	for cursor := uint64(0); ; {
		ids, next, err := s.st.NodeClients(ctx, node, cursor)
		if err != nil {
			s.log.Warn("reap failed", "node", node, "err", err)
			return
		}
		for _, id := range ids {
			res, err := s.markOffline(id, "", node, wire.ReasonNodeLost, nil, node != s.cfg.NodeID)
			if err == nil && res == store.NodeIsBack {
				s.log.Info("reap stopped: the node is back", "node", node, "clients", count)
				_ = s.st.ReleaseReap(ctx, node)
				return
			}
			if err != nil {
				s.log.Warn("reap failed", "node", node, "err", err)
				return
			}
			count++
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	// Remove the node unless it came back meanwhile, and release the claim,
	// so that it can be reaped again should it return and die within the
	// claim's lifetime. (A failed reap keeps the claim until it expires,
	// then another survivor retries.)
	if _, err := s.st.FinishReap(ctx, node); err != nil {
		s.log.Warn("reap cleanup failed", "node", node, "err", err)
	}
	if count > 0 || node != s.cfg.NodeID {
		s.log.Info("reaped node", "node", node, "clients", count)
	}
}
