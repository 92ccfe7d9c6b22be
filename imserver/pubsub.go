package imserver

import (
	"context"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// subscriber owns the node's pub/sub connection: a dedicated rueidis
// connection whose hook never blocks on sockets. It hands each message to one
// of a few workers chosen by channel, so order per channel is kept; after a
// disconnect it resubscribes everything and resyncs presence.
type subscriber struct {
	s       *Server
	workers []chan rueidis.PubSubMessage
	seed    maphash.Seed

	// topicLocks serialise SUBSCRIBE/UNSUBSCRIBE of one topic so that the
	// last command sent matches the hub's state.
	topicLocks [64]sync.Mutex

	mu sync.Mutex
	dc rueidis.DedicatedClient // the live connection or nil; guarded by mu

	connected   atomic.Bool
	connectedAt atomic.Int64 // unix nanos
	lastProbe   atomic.Int64 // unix nanos of the last probe received
	dirty       atomic.Bool  // presence in Redis needs a resync
	kick        chan struct{}
}

const (
	subscribeBatch = 1000
	// workerQueue bounds the messages waiting for one worker. When it is
	// full the message is dropped and counted: blocking instead would stall
	// rueidis' reader until Redis, 32 MB behind, cuts the subscription and
	// everything in flight is lost, control messages included.
	workerQueue = 16384
)

func newSubscriber(s *Server) *subscriber {
	sub := &subscriber{s: s, seed: maphash.MakeSeed(), kick: make(chan struct{}, 1)}
	for i := 0; i < 4; i++ {
		sub.workers = append(sub.workers, make(chan rueidis.PubSubMessage, workerQueue))
	}
	return sub
}

func (sub *subscriber) markDirty() { sub.dirty.Store(true) }

// resyncIfDirty rewrites presence if a write failed or Redis may have lost
// it; on failure it stays dirty and the next call retries.
func (sub *subscriber) resyncIfDirty(ctx context.Context) {
	if !sub.connected.Load() || !sub.dirty.Swap(false) {
		return
	}
	if err := sub.s.resync(ctx); err != nil {
		sub.s.log.Warn("presence resync failed; will retry", "err", err)
		sub.dirty.Store(true)
	}
}

// healthy reports a live subscription that delivered a recent probe (or is
// too young to have had one).
func (sub *subscriber) healthy() bool {
	if !sub.connected.Load() {
		return false
	}
	grace := 3 * sub.s.cfg.ProbeInterval
	now := time.Now().UnixNano()
	return now-sub.connectedAt.Load() < int64(grace) || now-sub.lastProbe.Load() < int64(grace)
}

func (sub *subscriber) run(ctx context.Context) {
	// The worker channels are never closed: rueidis' reader may still be in
	// dispatch after we release the connection. Workers and dispatch stop on
	// ctx instead.
	var wg sync.WaitGroup
	for _, ch := range sub.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case m := <-ch:
					sub.s.handle(m.Channel, m.Message)
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	defer wg.Wait()

	s := sub.s
	backoff := 50 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		dc, release := s.rc.Dedicate()
		wait := dc.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: sub.dispatch})
		sub.mu.Lock()
		sub.dc = dc
		sub.mu.Unlock()
		err := sub.subscribeAll(ctx, dc)
		if err == nil {
			sub.connectedAt.Store(time.Now().UnixNano())
			sub.connected.Store(true)
			if !first {
				s.metrics.reconnects.Inc()
				s.log.Info("redis pub/sub resubscribed")
				sub.dirty.Store(true)
			}
			first = false
			backoff = 50 * time.Millisecond
			s.register(ctx)
			sub.resyncIfDirty(ctx)
			select {
			case err = <-wait:
			case <-sub.kick:
				s.log.Warn("pub/sub probe missing; reconnecting")
			case <-ctx.Done():
			}
		}
		sub.connected.Store(false)
		sub.mu.Lock()
		sub.dc = nil
		sub.mu.Unlock()
		// Close before release: releasing a live pub/sub connection cleans
		// its subscriptions with a command that waits on Redis without a
		// deadline, and hands a possibly broken connection back to the pool.
		dc.Close()
		release()
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("redis pub/sub disconnected", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// subscribeAll subscribes the node channel, broadcast and every topic with a
// local member, in batches.
func (sub *subscriber) subscribeAll(ctx context.Context, dc rueidis.DedicatedClient) error {
	n := sub.s.names
	chans := []string{n.NodeChannel(sub.s.cfg.NodeID), n.BroadcastChannel()}
	for _, t := range sub.s.hub.topicNames() {
		chans = append(chans, n.TopicChannel(t))
	}
	for len(chans) > 0 {
		k := min(len(chans), subscribeBatch)
		cctx, cancel := context.WithTimeout(ctx, sub.s.cfg.RedisTimeout)
		err := dc.Do(cctx, dc.B().Subscribe().Channel(chans[:k]...).Build()).Error()
		cancel()
		if err != nil {
			return err
		}
		chans = chans[k:]
	}
	return nil
}

// syncTopics makes the subscription of each named topic match whether it
// has a local member. While disconnected it does nothing: the reconnect
// subscribes every topic with members.
func (sub *subscriber) syncTopics(topics []string) {
	s := sub.s
	for _, t := range topics {
		l := &sub.topicLocks[maphash.String(sub.seed, t)%uint64(len(sub.topicLocks))]
		l.Lock()
		sub.mu.Lock()
		dc := sub.dc
		sub.mu.Unlock()
		if dc != nil {
			var cmd rueidis.Completed
			if s.hub.hasTopic(t) {
				cmd = dc.B().Subscribe().Channel(s.names.TopicChannel(t)).Build()
			} else {
				cmd = dc.B().Unsubscribe().Channel(s.names.TopicChannel(t)).Build()
			}
			ctx, cancel := s.redisCtx()
			if err := dc.Do(ctx, cmd).Error(); err != nil {
				s.metrics.redisErrs.Inc()
				s.log.Warn("topic subscription change failed", "channel", t, "err", err)
			}
			cancel()
		}
		l.Unlock()
	}
}

// dispatch runs in rueidis' reader; it only hands the message on. Data
// (sends, deliveries, channel and broadcast frames) is dropped and counted
// when the worker is full (see workerQueue); control messages (join, leave,
// kick, probe: rare) wait for room, since losing one would leave state
// wrong. Any overflow also schedules a resync, which reloads membership.
func (sub *subscriber) dispatch(m rueidis.PubSubMessage) {
	i := maphash.String(sub.seed, m.Channel) % uint64(len(sub.workers))
	select {
	case sub.workers[i] <- m:
		return
	default:
	}
	if isControl(m.Message) {
		select {
		case sub.workers[i] <- m:
		case <-sub.s.ctx.Done():
		}
		return
	}
	sub.s.metrics.overflow.Inc()
	sub.markDirty()
}

// isControl spots the node messages that must not be dropped, from the
// kind that EncodeNodeMsg writes first.
func isControl(msg string) bool {
	for _, k := range []string{wire.KindJoin, wire.KindLeave, wire.KindKick, wire.KindProbe} {
		if strings.HasPrefix(msg, `{"k":"`+k+`"`) {
			return true
		}
	}
	return false
}

// handle processes one pub/sub message on a worker.
func (s *Server) handle(channel, payload string) {
	n := s.names
	switch {
	case channel == n.NodeChannel(s.cfg.NodeID):
		s.handleNodeMsg([]byte(payload))
	case channel == n.BroadcastChannel():
		s.metrics.messagesIn.WithLabelValues("broadcast").Inc()
		f := []byte(payload)
		if !wire.ValidFrame(f) {
			s.malformed(channel, wire.ErrMalformed)
			return
		}
		s.hub.sendAll(outFrame{b: f, ts: frameTS(f)})
	case strings.HasPrefix(channel, n.TopicPrefix()):
		s.metrics.messagesIn.WithLabelValues("channel").Inc()
		f := []byte(payload)
		if !wire.ValidFrame(f) {
			s.malformed(channel, wire.ErrMalformed)
			return
		}
		s.hub.sendTopic(strings.TrimPrefix(channel, n.TopicPrefix()), outFrame{b: f, ts: frameTS(f)})
	}
}

func (s *Server) malformed(channel string, err error) {
	s.metrics.malformed.Inc()
	s.log.Warn("ignored malformed message from redis", "channel", channel, "err", err)
}

func (s *Server) handleNodeMsg(payload []byte) {
	h, frames, err := wire.DecodeNodeMsg(payload)
	if err != nil {
		s.malformed(s.names.NodeChannel(s.cfg.NodeID), err)
		return
	}
	s.metrics.messagesIn.WithLabelValues(h.Kind).Inc()
	switch h.Kind {
	case wire.KindSend:
		f := outFrame{b: frames[0], ts: frameTS(frames[0])}
		var receipts [][]byte
		for _, to := range h.To {
			ok := s.hub.sendClient(to, f)
			if h.Receipt != "" {
				st := wire.StatusOffline
				if ok {
					st = wire.StatusDelivered
				}
				receipts = append(receipts, wire.ReceiptFrame(h.ID, to, st))
			}
		}
		if h.Echo != "" {
			s.hub.sendClient(h.Echo, outFrame{b: frames[1], ts: f.ts})
		}
		if len(receipts) > 0 {
			s.sendReceipts(h.Receipt, receipts)
		}
	case wire.KindDeliver:
		for _, fb := range frames {
			f := outFrame{b: fb, ts: frameTS(fb)}
			for _, to := range h.To {
				s.hub.sendClient(to, f)
			}
		}
	case wire.KindJoin:
		s.applyJoin(h.Client, validChans(h.Chans))
	case wire.KindLeave:
		s.applyLeave(h.Client, validChans(h.Chans))
	case wire.KindKick:
		s.closeClient(h.Client, wire.CloseForcedOffline, "forced offline", wire.ReasonKicked)
	case wire.KindProbe:
		if h.Nonce == s.cfg.NodeID {
			s.sub.lastProbe.Store(time.Now().UnixNano())
		}
	}
}

func validChans(chans []string) []string {
	out := chans[:0:0]
	for _, c := range chans {
		if wire.ValidateChannel(c) == nil {
			out = append(out, c)
		}
	}
	return out
}

// sendReceipts delivers receipt frames to the sender's sockets: locally if
// the sender is here, else with one PUBLISH to the sender's owner.
func (s *Server) sendReceipts(sender string, frames [][]byte) {
	if s.hub.get(sender) != nil {
		for _, fb := range frames {
			s.hub.sendClient(sender, outFrame{b: fb})
		}
		return
	}
	owner := wire.Owner(sender, s.liveNodes())
	if owner == s.cfg.NodeID {
		return // the sender is offline
	}
	msg := wire.EncodeNodeMsg(wire.NodeMsg{Kind: wire.KindDeliver, To: []string{sender}}, frames...)
	ctx, cancel := s.redisCtx()
	defer cancel()
	if err := s.rc.Do(ctx, s.rc.B().Publish().Channel(s.names.NodeChannel(owner)).Message(rueidis.BinaryString(msg)).Build()).Error(); err != nil {
		s.metrics.redisErrs.Inc()
	}
}

// probeLoop publishes a probe to the node's own channel; if probes stop
// arriving on a connection that looks alive, it forces a resubscribe.
func (s *Server) probeLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.ProbeInterval)
	defer t.Stop()
	msg := wire.EncodeNodeMsg(wire.NodeMsg{Kind: wire.KindProbe, Nonce: s.cfg.NodeID})
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !s.sub.connected.Load() {
			continue
		}
		if !s.sub.healthy() {
			select {
			case s.sub.kick <- struct{}{}:
			default:
			}
			continue
		}
		cctx, cancel := s.redisCtx()
		_ = s.rc.Do(cctx, s.rc.B().Publish().Channel(s.names.NodeChannel(s.cfg.NodeID)).Message(rueidis.BinaryString(msg)).Build()).Error()
		cancel()
	}
}
