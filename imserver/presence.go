package imserver

import (
	"context"
	"errors"
	"time"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// attach registers a socket; the caller holds the client's stripe (admit
// took it) and, once it has let go of it, passes the returned topics to
// syncTopics (never while holding a stripe: a pub/sub worker may be
// waiting on it).
//
// The first socket of a client is marked online in Redis, its channels
// loaded, in one script that runs while the client's stripe is held and
// before the socket is visible in the hub; a join published meanwhile is
// then either in the loaded set or, its handler waiting for the stripe,
// applied once the socket is here. That script is the connect's own
// (adm.online, connect.lua, run by admit) or, when admit could not run it,
// online.lua here, after hub.add.
func (s *Server) attach(cn *conn, adm admission) (topics []string) {
	rec := adm.rec
	c, first := s.hub.add(rec.Client, rec.Meta, cn)
	s.metrics.conns.Inc()
	s.metrics.connects.Inc()
	if !first {
		// adm.online is nil: admit runs the connect script only while the
		// stripe, held since, saw no socket of the client here.
		return nil
	}
	s.metrics.clients.Inc()
	s.cancelGrace(c.id) // back within its grace: presence was kept
	// A token issued before the node set changed can land a client on a node
	// that no longer owns it; move it like the others. Our own view may be
	// the stale one, so decide only after our next registry refresh.
	if wire.Owner(c.id, s.liveNodes()) != s.cfg.NodeID {
		s.moveLater(c.id, s.cfg.LeaseTTL/3+time.Second)
	}
	if adm.online != nil {
		return s.hub.join(c, adm.online.Chans)
	}
	s.metrics.connectFallbacks.WithLabelValues(adm.why).Inc()
	_, chans, err := s.markOnline(c)
	if err != nil {
		s.log.Warn("failed to mark client online; will resync", "client", c.id, "err", err)
		s.markDirty()
		return nil
	}
	return s.hub.join(c, chans)
}

// detach removes a socket; the caller holds the client's stripe and syncs
// the returned topics after letting go of it.
func (s *Server) detach(cn *conn, reason string) (topics []string) {
	last, chans := s.hub.remove(cn)
	s.connCount.Add(-1)
	s.metrics.conns.Dec()
	s.metrics.closes.WithLabelValues(reason).Inc()
	if reason == wire.ReasonSlow { // counted here: once per socket, however it was cut
		s.metrics.slowCloses.Inc()
	}
	if !last {
		return nil
	}
	s.metrics.clients.Dec()
	if s.graceApplies(cn, reason) {
		s.deferOffline(cn.cl.id, cn.cl.meta, reason, chans)
		return chans
	}
	if _, err := s.markOffline(cn.cl.id, cn.cl.meta, s.cfg.NodeID, reason, chans, false); err != nil {
		s.log.Warn("failed to mark client offline; will resync", "client", cn.cl.id, "err", err)
		s.markDirty()
	}
	return chans
}

func (s *Server) event(typ, id, meta, node, reason string, conns int) wire.Event {
	return wire.Event{Type: typ, Client: id, Node: node, Meta: meta, Conns: conns,
		TS: time.Now().UnixMilli(), Reason: reason}
}

// markOnline records the client online: existed reports whether Redis
// already had it online, chans are its channels in Redis.
func (s *Server) markOnline(c *client) (existed bool, chans []string, err error) {
	ctx, cancel := s.redisCtx()
	defer cancel()
	existed, chans, err = s.st.MarkOnline(ctx, c.id, s.cfg.NodeID, s.event(wire.EventOnline, c.id, c.meta, s.cfg.NodeID, "", 1))
	if err != nil {
		s.metrics.redisErrs.Inc()
		if errors.Is(err, store.ErrRedisFull) {
			s.setRedisFull(true, "err", err)
		}
	}
	return existed, chans, err
}

// markOffline records that a client of node (this node, or a dead one
// being reaped) has no socket left there; joined is what we believe its
// channels are.
func (s *Server) markOffline(id, meta, node, reason string, joined []string, reaping bool) (store.OfflineResult, error) {
	ctx, cancel := s.redisCtx()
	defer cancel()
	res, err := s.st.MarkOffline(ctx, store.OfflineRequest{
		Client: id, Node: node, Joined: joined, Reaping: reaping,
		Offline: s.event(wire.EventOffline, id, meta, node, reason, 0),
	})
	if err != nil {
		s.metrics.redisErrs.Inc()
	}
	return res, err
}

func (s *Server) markDirty() { s.presenceDirty.Store(true) }

// resyncIfDirty rewrites presence if a write failed or Redis may have lost
// it; on failure it stays dirty and the next call retries.
func (s *Server) resyncIfDirty(ctx context.Context) {
	if !s.sub.connected.Load() || !s.presenceDirty.Swap(false) {
		return
	}
	if err := s.resync(ctx); err != nil {
		s.log.Warn("presence resync failed; will retry", "err", err)
		s.markDirty()
	}
}

// resync makes Redis agree with this node after Redis came back (it may have
// restarted empty), after a failed write, or after the node's lease lapsed
// and a survivor reaped it. A client Redis still knows keeps Redis' view of
// its channels (a LeaveChan may have happened meanwhile); a client Redis
// lost is re-announced with an online event and its channels are written
// back from memory.
func (s *Server) resync(ctx context.Context) error {
	var topics []string
	defer func() { s.sub.syncTopics(topics) }()
	for _, c := range s.hub.clientList() {
		mu := s.lockStripe(c.id)
		err := func() error {
			c.mu.RLock()
			alive := len(c.conns) > 0
			local := make([]string, 0, len(c.chans))
			for ch := range c.chans {
				local = append(local, ch)
			}
			c.mu.RUnlock()
			if !alive {
				return nil
			}
			// Whether Redis still knows the client decides whose channels
			// win. A client it lost gets its channels written back before
			// it is marked online again, never after: if the write-back
			// fails, Redis still does not know the client and the next
			// resync restores it again; the other order would leave a
			// client Redis knows with channels it lost, whose loss the
			// next resync would then copy into memory for good.
			cctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout)
			defer cancel()
			node, err := s.st.ClientNode(cctx, c.id)
			if err != nil {
				return err
			}
			if node == "" {
				if err := s.st.RestoreMembership(cctx, c.id, local); err != nil {
					return err
				}
			}
			existed, inRedis, err := s.markOnline(c)
			if err != nil {
				return err
			}
			if existed {
				// Redis knew the client: a LeaveChan may have happened
				// while we could not hear it, so Redis' channels win.
				keep := make(map[string]struct{}, len(inRedis))
				for _, ch := range inRedis {
					keep[ch] = struct{}{}
				}
				var gone []string
				for _, ch := range local {
					if _, ok := keep[ch]; !ok {
						gone = append(gone, ch)
					}
				}
				topics = append(topics, s.hub.leave(c, gone)...)
			}
			topics = append(topics, s.hub.join(c, inRedis)...)
			return nil
		}()
		mu.Unlock()
		if err != nil {
			return err
		}
	}
	// Sockets that closed while Redis was unreachable left entries behind.
	for cursor := uint64(0); ; {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout)
		ids, next, err := s.st.NodeClients(cctx, s.cfg.NodeID, cursor)
		cancel()
		if err != nil {
			return err
		}
		for _, id := range ids {
			mu := s.lockStripe(id)
			if s.hub.get(id) == nil && !s.inGrace(id) {
				_, err = s.markOffline(id, "", s.cfg.NodeID, wire.ReasonClosed, nil, false)
			}
			mu.Unlock()
			if err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// applyJoin and applyLeave mirror a JoinChan/LeaveChan that imhelper already
// wrote to Redis into local memory and subscriptions. They run on a pub/sub
// worker, which must never wait for a Redis reply that the same pub/sub
// reader has to deliver, so the (un)subscribe runs in its own goroutine;
// syncTopics converges on the hub's state whatever the order. pos holds
// the channels' positions at join time: the client's sockets are held
// before they start receiving the channel, and filled from there once the
// topic is subscribed, so nothing sent after JoinChan began is missed.
func (s *Server) applyJoin(id string, chans, pos []string) {
	mu := s.lockStripe(id)
	var added []string
	ready := make(chan struct{})
	if c := s.hub.get(id); c != nil {
		s.joinFills(c, chans, pos, ready)
		added = s.hub.join(c, chans)
	}
	mu.Unlock()
	if !s.startGoroutine(func() {
		s.sub.syncTopics(added)
		close(ready)
	}) {
		close(ready)
	}
}

func (s *Server) applyLeave(id string, chans []string) {
	mu := s.lockStripe(id)
	var emptied []string
	if c := s.hub.get(id); c != nil {
		emptied = s.hub.leave(c, chans)
		for _, cn := range c.connList() {
			cn.forget(chans)
		}
	}
	mu.Unlock()
	if len(emptied) > 0 {
		s.startGoroutine(func() { s.sub.syncTopics(emptied) })
	}
}
