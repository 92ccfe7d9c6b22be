package imserver

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// attach registers a socket; the caller holds the client's stripe and, once
// it has let go of it, passes the returned topics to syncTopics (never
// while holding a stripe: a pub/sub worker may be waiting on it).
//
// The first socket of a client marks it online in Redis and loads its
// channels, in one script, after it is visible in the hub: a join published
// meanwhile is then either in the loaded set or applied by the join handler.
func (s *Server) attach(cn *conn, rec wire.TokenRecord) (topics []string) {
	c, first := s.hub.add(rec.Client, rec.Meta, cn)
	s.metrics.conns.Inc()
	s.metrics.connects.Inc()
	if !first {
		return nil
	}
	s.metrics.clients.Inc()
	// A token issued before the node set changed can land a client on a node
	// that no longer owns it; move it like the others. Our own view may be
	// the stale one, so decide only after our next registry refresh.
	if wire.Owner(c.id, s.liveNodes()) != s.cfg.NodeID {
		s.moveLater(c.id, s.cfg.LeaseTTL/3+time.Second)
	}
	_, chans, err := s.markOnline(c)
	if err != nil {
		s.log.Warn("failed to mark client online; will resync", "client", c.id, "err", err)
		s.sub.markDirty()
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
	if _, err := s.markOffline(cn.cl.id, cn.cl.meta, s.cfg.NodeID, reason, false); err != nil {
		s.log.Warn("failed to mark client offline; will resync", "client", cn.cl.id, "err", err)
		s.sub.markDirty()
	}
	return chans
}

func (s *Server) event(typ, id, meta, node, reason string, conns int) string {
	return string(wire.Event{Type: typ, Client: id, Node: node, Meta: meta, Conns: conns,
		TS: time.Now().UnixMilli(), Reason: reason}.Encode())
}

// markOnline runs the online script: existed reports whether Redis already
// had the client online, chans are its channels in Redis.
func (s *Server) markOnline(c *client) (existed bool, chans []string, err error) {
	ctx, cancel := s.redisCtx()
	defer cancel()
	n := s.names
	res, err := s.onlineScript.Exec(ctx, s.rc,
		[]string{n.Online(), n.NodeClients(s.cfg.NodeID), n.ClientChans(c.id), n.EventStream()},
		[]string{c.id, s.cfg.NodeID, s.event(wire.EventOnline, c.id, c.meta, s.cfg.NodeID, "", 1),
			n.EventChannel(), strconv.Itoa(s.cfg.EventStreamMaxLen)},
	).ToArray()
	if err != nil || len(res) == 0 {
		s.metrics.redisErrs.Inc()
		return false, nil, errors.Join(err, errors.New("empty reply from online script"))
	}
	flag, _ := res[0].AsInt64()
	for _, v := range res[1:] {
		if ch, err := v.ToString(); err == nil {
			chans = append(chans, ch)
		}
	}
	return flag == 1, chans, nil
}

// errNodeBack reports a reap refused because the node holds a lease again.
var errNodeBack = errors.New("node is back")

// markOffline runs the offline script for a client of node (this node, or a
// dead one being reaped).
func (s *Server) markOffline(id, meta, node, reason string, reaping bool) (wentOffline bool, err error) {
	ctx, cancel := s.redisCtx()
	defer cancel()
	n := s.names
	flag := "0"
	if reaping {
		flag = "1"
	}
	res, err := s.offlineScript.Exec(ctx, s.rc,
		[]string{n.Online(), n.NodeClients(node), n.ClientChans(id), n.EventStream(), n.Chans(), n.NodeKey(node), n.NodeSet()},
		[]string{id, node, s.event(wire.EventOffline, id, meta, node, reason, 0),
			n.EventChannel(), strconv.Itoa(s.cfg.EventStreamMaxLen), n.ChanMembers(""), flag, n.NodeClients("")},
	).AsInt64()
	if err != nil {
		s.metrics.redisErrs.Inc()
		return false, err
	}
	if res < 0 {
		return false, errNodeBack
	}
	return res == 1, nil
}

// resync makes Redis agree with this node after Redis came back (it may have
// restarted empty), after a failed write, or after the node's lease lapsed
// and a survivor reaped it. A client Redis still knows keeps Redis' view of
// its channels (a LeaveChan may have happened meanwhile); a client Redis
// lost is re-announced with an online event and its channels are written
// back from memory.
func (s *Server) resync(ctx context.Context) error {
	n := s.names
	var topics []string
	defer func() { s.sub.syncTopics(topics) }()
	for _, c := range s.hub.clientList() {
		mu := s.stripe(c.id)
		mu.Lock()
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
			existed, inRedis, err := s.markOnline(c)
			if err != nil {
				return err
			}
			if existed {
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
				topics = append(topics, s.hub.join(c, inRedis)...)
				return nil
			}
			topics = append(topics, s.hub.join(c, inRedis)...)
			cmds := make(rueidis.Commands, 0, 3*len(local))
			for _, ch := range local {
				cmds = append(cmds,
					s.rc.B().Sadd().Key(n.ChanMembers(ch)).Member(c.id).Build(),
					s.rc.B().Sadd().Key(n.ClientChans(c.id)).Member(ch).Build(),
					s.rc.B().Sadd().Key(n.Chans()).Member(ch).Build())
			}
			for _, r := range s.rc.DoMulti(ctx, cmds...) {
				if err := r.Error(); err != nil {
					return err
				}
			}
			return nil
		}()
		mu.Unlock()
		if err != nil {
			return err
		}
	}
	// Sockets that closed while Redis was unreachable left entries behind.
	ids, err := s.rc.Do(ctx, s.rc.B().Smembers().Key(n.NodeClients(s.cfg.NodeID)).Build()).AsStrSlice()
	if err != nil {
		return err
	}
	for _, id := range ids {
		mu := s.stripe(id)
		mu.Lock()
		if s.hub.get(id) == nil {
			_, err = s.markOffline(id, "", s.cfg.NodeID, wire.ReasonClosed, false)
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
	var added []string
	if c := s.hub.get(id); c != nil {
		added = s.hub.join(c, chans)
	}
	mu.Unlock()
	if len(added) > 0 {
		go s.sub.syncTopics(added)
	}
}

func (s *Server) applyLeave(id string, chans []string) {
	mu := s.stripe(id)
	mu.Lock()
	var emptied []string
	if c := s.hub.get(id); c != nil {
		emptied = s.hub.leave(c, chans)
	}
	mu.Unlock()
	if len(emptied) > 0 {
		go s.sub.syncTopics(emptied)
	}
}

// closeClient closes every socket of a local client with code.
func (s *Server) closeClient(id string, code int, msg, reason string) {
	if c := s.hub.get(id); c != nil {
		for _, cn := range c.connList() {
			cn.close(websocket.StatusCode(code), msg, reason)
		}
	}
}

// moveLater closes client id with the moved code at a random moment within
// MoveWindow after minDelay, if by then it is still owned by another node.
func (s *Server) moveLater(id string, minDelay time.Duration) {
	delay := minDelay + time.Duration(rand.Int64N(int64(s.cfg.MoveWindow)))
	time.AfterFunc(delay, func() {
		if s.draining.Load() || wire.Owner(id, s.liveNodes()) == s.cfg.NodeID {
			return
		}
		s.closeClient(id, wire.CloseMoved, "moved to another node", wire.ReasonMoved)
	})
}
