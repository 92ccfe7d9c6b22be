package imserver

import (
	"context"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// subscriber owns the node's pub/sub subscription. Its hook never blocks on
// sockets: it hands each message to one of a few workers chosen by channel,
// so order per channel is kept, and after a disconnect it subscribes
// everything again. It holds no presence state and knows the server only
// through the functions it is given.
type subscriber struct {
	st       store.Subscriber
	node     string
	log      *slog.Logger
	metrics  *metrics
	timeout  time.Duration         // one Redis command
	grace    time.Duration         // how long without a probe before unhealthy
	handle   func([]store.Message) // a message, or a run of one channel's
	topics   func() []string       // channels with a local member
	hasTopic func(string) bool     // whether a channel has a local member
	onUp     func(resub bool)      // subscribed (again, with resub)
	onDrop   func(store.Message)   // a data message was dropped
	workers  []*workQueue
	backlog  *backlog // what every worker holds, against its bound
	seed     maphash.Seed

	// topicLocks serialise SUBSCRIBE/UNSUBSCRIBE of one topic so that the
	// last command sent matches the hub's state.
	topicLocks [64]sync.Mutex

	mu  sync.Mutex
	cur store.Subscription // the live subscription or nil; guarded by mu

	connected   atomic.Bool
	connectedAt atomic.Int64 // unix nanos
	lastProbe   atomic.Int64 // unix nanos of the last probe received
	kick        chan struct{}
}

const (
	subscriberWorkers = 4
	// defaultBacklogBytes and defaultWorkerQueue bound what waits for the
	// workers (Config.SubscriberQueueBytes, Config.SubscriberQueue): the
	// payload bytes of all four, and the messages of each. Under overload
	// the backlog grows and delivery is late, not lost, up to the bound;
	// past it a data message is dropped and counted. Blocking instead
	// would stall rueidis' reader until Redis, 32 MB behind, cuts the
	// subscription and everything in flight is lost, control messages
	// included. With history a drop is a longer delay: the node then fills
	// every socket from the streams. At the p2p knee on the test box
	// (30,000 msg/s of ~300 bytes) 64 MiB is about 7 s of backlog.
	defaultBacklogBytes = 64 << 20
	defaultWorkerQueue  = 1 << 18
)

func (s *Server) newSubscriber() *subscriber {
	sub := &subscriber{
		st:       s.st,
		node:     s.cfg.NodeID,
		log:      s.log,
		metrics:  s.metrics,
		timeout:  s.cfg.RedisTimeout,
		grace:    3 * s.cfg.ProbeInterval,
		handle:   s.routeRun,
		topics:   s.hub.topicNames,
		hasTopic: s.hub.hasTopic,
		onUp: func(resub bool) {
			if resub {
				s.markDirty()
			}
			s.register(s.ctx)
			s.resyncIfDirty(s.ctx)
			if resub { // what was published while unsubscribed is in the streams
				s.sweepStreams("resubscribe")
			}
		},
		onDrop: func(m store.Message) {
			s.losses.note(m)           // told to who has no stream for it
			s.sweepStreams("overflow") // the streams hold what was kept
		},
		backlog: &backlog{maxBytes: int64(s.cfg.SubscriberQueueBytes), maxMsgs: s.cfg.SubscriberQueue, behind: &s.behind},
		seed:    maphash.MakeSeed(),
		kick:    make(chan struct{}, 1),
	}
	for range subscriberWorkers {
		sub.workers = append(sub.workers, newWorkQueue())
	}
	return sub
}

// healthy reports a live subscription that delivered a recent probe (or is
// too young to have had one).
func (sub *subscriber) healthy() bool {
	if sub == nil || !sub.connected.Load() {
		return false
	}
	now := time.Now().UnixNano()
	return now-sub.connectedAt.Load() < int64(sub.grace) || now-sub.lastProbe.Load() < int64(sub.grace)
}

// probeSeen records a probe the node sent itself.
func (sub *subscriber) probeSeen() { sub.lastProbe.Store(time.Now().UnixNano()) }

// current is the live subscription, or nil.
func (sub *subscriber) current() store.Subscription {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return sub.cur
}

// reconnect makes run drop the subscription and subscribe again.
func (sub *subscriber) reconnect() {
	select {
	case sub.kick <- struct{}{}:
	default:
	}
}

// run keeps the node subscribed until ctx ends.
func (sub *subscriber) run(ctx context.Context) {
	// The work queues are never closed: rueidis' reader may still be in
	// dispatch after we release the connection. Workers stop on ctx.
	var wg sync.WaitGroup
	for _, q := range sub.workers {
		wg.Add(1)
		go func() { // ends with ctx; run waits for it
			defer wg.Done()
			q.work(ctx, sub.backlog, sub.handle)
		}()
	}
	defer wg.Wait()

	var backoff store.Backoff
	first := true
	for ctx.Err() == nil {
		cur, err := sub.open(ctx)
		if err == nil {
			sub.connectedAt.Store(time.Now().UnixNano())
			sub.connected.Store(true)
			if !first {
				sub.metrics.reconnects.Inc()
				sub.log.Info("redis pub/sub resubscribed")
			}
			sub.onUp(!first)
			first = false
			backoff.Reset()
			select {
			case err = <-cur.Done():
			case <-sub.kick:
				sub.log.Warn("pub/sub probe missing; reconnecting")
			case <-ctx.Done():
			}
			sub.connected.Store(false)
			sub.mu.Lock()
			sub.cur = nil
			sub.mu.Unlock()
			cur.Close()
		}
		if ctx.Err() != nil {
			return
		}
		sub.log.Warn("redis pub/sub disconnected", "err", err)
		if backoff.Wait(ctx) != nil {
			return
		}
	}
}

// open subscribes the node channel, broadcast and every topic with a local
// member.
func (sub *subscriber) open(ctx context.Context) (store.Subscription, error) {
	cctx, cancel := context.WithTimeout(ctx, sub.timeout)
	defer cancel()
	cur, err := sub.st.Subscribe(cctx, sub.node, sub.dispatch)
	if err != nil {
		return nil, err
	}
	sub.mu.Lock()
	sub.cur = cur
	sub.mu.Unlock()
	if err := cur.Topics(cctx, sub.topics()...); err != nil {
		sub.mu.Lock()
		sub.cur = nil
		sub.mu.Unlock()
		cur.Close()
		return nil, err
	}
	return cur, nil
}

// syncTopics makes the subscription of each named topic match whether it
// has a local member. While disconnected it does nothing: the reconnect
// subscribes every topic with members.
func (sub *subscriber) syncTopics(topics []string) {
	for _, t := range topics {
		l := &sub.topicLocks[maphash.String(sub.seed, t)%uint64(len(sub.topicLocks))]
		l.Lock()
		sub.mu.Lock()
		cur := sub.cur
		sub.mu.Unlock()
		if cur != nil {
			ctx, cancel := context.WithTimeout(context.Background(), sub.timeout)
			var err error
			if sub.hasTopic(t) {
				err = cur.Topics(ctx, t)
			} else {
				err = cur.Untopic(ctx, t)
			}
			cancel()
			if err != nil {
				sub.metrics.redisErrs.Inc()
				sub.log.Warn("topic subscription change failed", "channel", t, "err", err)
			}
		}
		l.Unlock()
	}
}

// dispatch runs in rueidis' reader; it only hands the message on, and
// never blocks. Data (sends, deliveries, channel and broadcast frames) is
// dropped and counted once the backlog is full (see defaultBacklogBytes);
// control messages (join, leave, kick, probe) are always queued, past the
// bound if need be, since losing one would leave state wrong. They are few
// and small. Membership travels only in control messages, so a drop needs
// no resync; it schedules a sweep, which fills what was kept.
func (sub *subscriber) dispatch(m store.Message) {
	key := m.Channel
	if m.Kind != store.ToChannel {
		key = string(rune(m.Kind))
	}
	q := sub.workers[maphash.String(sub.seed, key)%uint64(len(sub.workers))]
	control := m.Kind == store.ToNode && wire.IsControlMsg(m.Payload)
	if q.push(m, sub.backlog, control) {
		return
	}
	sub.metrics.overflow.Inc()
	sub.onDrop(m)
}
