package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// On a Redis Cluster every pub/sub channel of the broker is a sharded
// channel (SPUBLISH/SSUBSCRIBE, Redis 7): a message goes to the one master
// serving the channel's slot and is pushed only to that shard's
// subscribers, where a plain PUBLISH would be copied to every node of the
// Cluster. A node's subscription is one dedicated connection per master
// (not per slot, not per channel), each subscribed to the node's channels
// whose slots that master serves.
//
// rueidis does not resubscribe a dedicated connection, and a slot that
// moves takes its subscriptions with it: Redis ends them with an
// unsolicited sunsubscribe. The subscription does not try to repair itself
// channel by channel. It fails as a whole (Done delivers ErrShardMoved or
// the connection's error) on any of:
//   - a shard connection breaking (a killed master),
//   - an unsolicited sunsubscribe (a slot migrated or its master demoted),
//   - the slot map, read every SlotCheckInterval, placing a subscribed
//     channel's slot on another master (a failover that left the old
//     connection up),
//   - a shard's probes not coming back (Probe).
//
// The node then subscribes again from a fresh slot map and fills its
// sockets from the streams, exactly as after a lost connection to a single
// Redis: one recovery path, which the node already proves, instead of a
// second one per channel. A migration or failover is rare, and costs one
// resubscription of the node's channels (50,000 channels in about 40 ms).

// ErrShardMoved reports a sharded subscription that Redis ended or that no
// longer matches the slot map: the caller subscribes again.
var ErrShardMoved = errors.New("a subscribed slot moved to another master")

// SlotCheckInterval is how often a Cluster subscription compares its
// connections with the slot map.
const SlotCheckInterval = 5 * time.Second

// probeMisses is how many of a shard's probes in a row may be outstanding
// before Probe fails the subscription.
const probeMisses = 3

// slotMap is which master address serves each slot.
type slotMap [clusterSlots]string

// readSlotMap asks the Cluster for its slot map (CLUSTER SLOTS).
func (r *Redis) readSlotMap(ctx context.Context) (*slotMap, error) {
	arr, err := r.rc.Do(ctx, r.rc.B().ClusterSlots().Build()).ToArray()
	if err != nil {
		return nil, fmt.Errorf("cluster slots: %w", err)
	}
	m := new(slotMap)
	for _, rng := range arr {
		f, err := rng.ToArray()
		if err != nil || len(f) < 3 {
			return nil, fmt.Errorf("cluster slots: malformed range")
		}
		lo, err1 := f[0].AsInt64()
		hi, err2 := f[1].AsInt64()
		master, err3 := f[2].ToArray()
		if err1 != nil || err2 != nil || err3 != nil || len(master) < 2 || lo < 0 || hi >= clusterSlots || lo > hi {
			return nil, fmt.Errorf("cluster slots: malformed range")
		}
		host, _ := master[0].ToString()
		port, _ := master[1].AsInt64()
		if host == "" || host == "?" { // a node that does not know its address yet
			return nil, fmt.Errorf("cluster slots: no address for slots %d-%d yet", lo, hi)
		}
		addr := net.JoinHostPort(host, strconv.FormatInt(port, 10)) // as rueidis names its nodes
		for s := lo; s <= hi; s++ {
			m[s] = addr
		}
	}
	for s, a := range m {
		if a == "" {
			return nil, fmt.Errorf("cluster slots: slot %d is not served", s)
		}
	}
	return m, nil
}

// shardConn is the subscription's connection to one master.
type shardConn struct {
	addr    string
	dc      rueidis.DedicatedClient
	release func()
	probe   string      // this node's probe channel on this master
	closed  atomic.Bool // closed by us: its end is not a failure
	sent    atomic.Int64
	seen    atomic.Int64
}

// clusterSub implements Subscription on a Cluster.
type clusterSub struct {
	r       *Redis
	node    string
	route   func(rueidis.PubSubMessage)
	slots   *slotMap // the map the connections were opened from
	done    chan error
	stop    chan struct{}
	stopped sync.Once
	openMu  sync.Mutex // serialises opening shard connections

	mu      sync.Mutex
	closed  bool                  // Close ran: no connection may be added
	shards  map[string]*shardConn // master address → connection
	chans   map[string]*shardConn // subscribed channel → its connection
	leaving map[string]bool       // channels being unsubscribed by us
}

// subscribeCluster is Subscribe on a Cluster.
func (r *Redis) subscribeCluster(ctx context.Context, node string, route func(rueidis.PubSubMessage)) (Subscription, error) {
	slots, err := r.readSlotMap(ctx)
	if err != nil {
		return nil, err
	}
	s := &clusterSub{
		r: r, node: node, route: route, slots: slots,
		done: make(chan error, 1), stop: make(chan struct{}),
		shards: map[string]*shardConn{}, chans: map[string]*shardConn{}, leaving: map[string]bool{},
	}
	// A connection to every master, for its probe channel, whether or
	// not one of our channels lives there yet.
	seen := map[string]bool{}
	for _, a := range slots {
		if !seen[a] {
			seen[a] = true
			if _, err := s.shard(ctx, a); err != nil {
				s.Close()
				return nil, err
			}
		}
	}
	if err := s.subscribe(ctx, []string{r.k.nodeChannel(node), r.k.broadcastChannel()}); err != nil {
		s.Close()
		return nil, err
	}
	go s.watchSlots()
	return s, nil
}

// fail ends the subscription with err (the first one wins).
func (s *clusterSub) fail(err error) {
	select {
	case s.done <- err:
	default:
	}
}

// shard returns the connection to master addr, opening it on first use.
func (s *clusterSub) shard(ctx context.Context, addr string) (*shardConn, error) {
	s.openMu.Lock()
	defer s.openMu.Unlock()
	s.mu.Lock()
	sc, closed := s.shards[addr], s.closed
	s.mu.Unlock()
	if closed {
		return nil, errSubClosed
	}
	if sc != nil {
		return sc, nil
	}
	nc := s.r.rc.Nodes()[addr]
	if nc == nil { // rueidis has not learnt of a new master yet
		return nil, fmt.Errorf("no connection to cluster master %s yet", addr)
	}
	slot := s.firstSlot(addr)
	sc = &shardConn{addr: addr, probe: s.r.k.probeChannel(s.node, slotTag(slot))}
	if keySlot(sc.probe) != slot {
		return nil, fmt.Errorf("the key prefix %q holds a hash tag, which a Redis Cluster cannot spread", s.r.k.prefix)
	}
	sc.dc, sc.release = nc.Dedicate()
	wait := sc.dc.SetPubSubHooks(rueidis.PubSubHooks{
		OnMessage: func(m rueidis.PubSubMessage) {
			if m.Channel == sc.probe {
				if n, err := strconv.ParseInt(m.Message, 10, 64); err == nil {
					sc.seen.Store(n)
				}
				return
			}
			s.route(m)
		},
		OnSubscription: func(ps rueidis.PubSubSubscription) {
			if ps.Kind != "sunsubscribe" {
				return
			}
			s.mu.Lock()
			ours := s.leaving[ps.Channel]
			delete(s.leaving, ps.Channel)
			if !ours {
				delete(s.chans, ps.Channel)
			}
			s.mu.Unlock()
			if !ours && !sc.closed.Load() {
				s.fail(fmt.Errorf("%w: redis ended %s on %s", ErrShardMoved, ps.Channel, addr))
			}
		},
	})
	go func() {
		select {
		case err := <-wait:
			if !sc.closed.Load() {
				s.fail(fmt.Errorf("cluster master %s: %w", addr, err))
			}
		case <-s.stop:
		}
	}()
	if err := sc.dc.Do(ctx, sc.dc.B().Ssubscribe().Channel(sc.probe).Build()).Error(); err != nil {
		sc.close()
		return nil, fmt.Errorf("ssubscribe on %s: %w", addr, err)
	}
	s.mu.Lock()
	if s.closed { // Close ran meanwhile: it did not see this one
		s.mu.Unlock()
		sc.close()
		return nil, errSubClosed
	}
	s.shards[addr] = sc
	s.mu.Unlock()
	return sc, nil
}

var errSubClosed = errors.New("subscription closed")

// close closes the connection before releasing it (see redisSub.Close).
func (sc *shardConn) close() {
	sc.closed.Store(true)
	sc.dc.Close()
	sc.release()
}

// firstSlot is the lowest slot master addr serves.
func (s *clusterSub) firstSlot(addr string) int {
	for i, a := range s.slots {
		if a == addr {
			return i
		}
	}
	return 0
}

// subscribe SSUBSCRIBEs the named channels, each on the connection to the
// master of its slot, one command per slot (Redis refuses an SSUBSCRIBE
// across slots), pipelined per connection.
func (s *clusterSub) subscribe(ctx context.Context, names []string) error {
	type group struct {
		sc    *shardConn
		slots map[int][]string
	}
	groups := map[string]*group{}
	for _, n := range names {
		slot := keySlot(n)
		addr := s.slots[slot]
		g := groups[addr]
		if g == nil {
			sc, err := s.shard(ctx, addr)
			if err != nil {
				return err
			}
			g = &group{sc: sc, slots: map[int][]string{}}
			groups[addr] = g
		}
		g.slots[slot] = append(g.slots[slot], n)
	}
	for _, g := range groups {
		cmds := make(rueidis.Commands, 0, len(g.slots))
		for _, chans := range g.slots {
			for len(chans) > 0 {
				k := min(len(chans), subscribeBatch)
				cmds = append(cmds, g.sc.dc.B().Ssubscribe().Channel(chans[:k]...).Build())
				chans = chans[k:]
			}
		}
		if err := firstErr(g.sc.dc.DoMulti(ctx, cmds...)); err != nil {
			return fmt.Errorf("ssubscribe on %s: %w", g.sc.addr, err)
		}
		s.mu.Lock()
		for _, chans := range g.slots {
			for _, n := range chans {
				s.chans[n] = g.sc
				delete(s.leaving, n) // subscribed again: Redis ending it now is news
			}
		}
		s.mu.Unlock()
	}
	return nil
}

// Topics implements Subscription.
func (s *clusterSub) Topics(ctx context.Context, chans ...string) error {
	return s.subscribe(ctx, s.r.k.topicChannels(chans))
}

// Untopic implements Subscription.
func (s *clusterSub) Untopic(ctx context.Context, ch string) error {
	name := s.r.k.topicChannel(ch)
	s.mu.Lock()
	sc := s.chans[name]
	if sc != nil {
		delete(s.chans, name)
		s.leaving[name] = true
	}
	s.mu.Unlock()
	if sc == nil {
		return nil
	}
	return s.sunsubscribe(ctx, sc, name)
}

// sunsubscribe leaves channel name (marked leaving) on sc. If the command
// fails the channel may still be subscribed, and Redis ending it later is
// news again.
func (s *clusterSub) sunsubscribe(ctx context.Context, sc *shardConn, name string) error {
	err := sc.dc.Do(ctx, sc.dc.B().Sunsubscribe().Channel(name).Build()).Error()
	if err != nil {
		s.mu.Lock()
		delete(s.leaving, name)
		s.mu.Unlock()
	}
	return err
}

// Probe implements Subscription: a probe on every master's connection,
// each on this node's probe channel there.
func (s *clusterSub) Probe(ctx context.Context) error {
	s.mu.Lock()
	shards := make([]*shardConn, 0, len(s.shards))
	for _, sc := range s.shards {
		shards = append(shards, sc)
	}
	s.mu.Unlock()
	cmds := make(rueidis.Commands, 0, len(shards))
	for _, sc := range shards {
		if sc.sent.Load()-sc.seen.Load() >= probeMisses {
			err := fmt.Errorf("%w: %d probes on %s did not come back", ErrShardMoved, probeMisses, sc.addr)
			s.fail(err)
			return err
		}
		n := sc.sent.Add(1)
		cmds = append(cmds, s.r.rc.B().Spublish().Channel(sc.probe).Message(strconv.FormatInt(n, 10)).Build())
	}
	return firstErr(s.r.rc.DoMulti(ctx, cmds...))
}

// watchSlots fails the subscription when the slot map places one of its
// channels on another master than the connection it is subscribed on.
func (s *clusterSub) watchSlots() {
	t := time.NewTicker(SlotCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		// CLUSTER SLOTS goes to any node, and a replica or a node that
		// has not heard of a change yet answers with an older map: a move
		// counts only when a second read agrees.
		moved := ""
		for range 2 {
			ctx, cancel := context.WithTimeout(context.Background(), ConnTimeout)
			m, err := s.r.readSlotMap(ctx)
			cancel()
			if err != nil { // the connections' own errors report a Cluster that is down
				moved = ""
				break
			}
			if moved = s.movedChannel(m); moved == "" {
				break
			}
		}
		if moved != "" {
			s.fail(fmt.Errorf("%w: the slot map moved %s", ErrShardMoved, moved))
			return
		}
	}
}

// movedChannel is a subscribed channel (or probe channel) that m places on
// another master than the connection it is on, or "".
func (s *clusterSub) movedChannel(m *slotMap) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, sc := range s.chans {
		if m[keySlot(n)] != sc.addr {
			return n
		}
	}
	for _, sc := range s.shards {
		if m[keySlot(sc.probe)] != sc.addr {
			return sc.probe
		}
	}
	return ""
}

// Done implements Subscription.
func (s *clusterSub) Done() <-chan error { return s.done }

// Close implements Subscription (see redisSub.Close).
func (s *clusterSub) Close() {
	s.stopped.Do(func() { close(s.stop) })
	s.mu.Lock()
	s.closed = true
	shards := s.shards
	s.shards = map[string]*shardConn{}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, sc := range shards { // in parallel: each may wait for a reply
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc.close()
		}()
	}
	wg.Wait()
}

// DropNodeChannel is redisSub.DropNodeChannel on a Cluster.
func (s *clusterSub) DropNodeChannel(ctx context.Context) error {
	name := s.r.k.nodeChannel(s.node)
	s.mu.Lock()
	sc := s.chans[name]
	if sc != nil {
		s.leaving[name] = true
	}
	s.mu.Unlock()
	if sc == nil {
		return nil
	}
	return s.sunsubscribe(ctx, sc, name)
}
