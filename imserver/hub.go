package imserver

import (
	"hash/maphash"
	"runtime"
	"sync"

	"github.com/imbroker/imbroker/internal/wire"
)

// hub is the node's in-memory view of its local clients and their channel
// membership. Lock order: shard.mu or hub.topicsMu, then client.mu, then
// conn.mu; hub.topicsMu and a shard's mu are never held together.
type hub struct {
	seed   maphash.Seed
	shards [64]hubShard

	topicsMu sync.RWMutex
	// topics maps a channel name to its local member clients (guarded by topicsMu).
	topics map[string]map[*client]struct{}
}

type hubShard struct {
	mu      sync.RWMutex
	clients map[string]*client // guarded by mu
}

// client is one clientId with at least one socket on this node.
type client struct {
	id   string
	meta string

	mu    sync.RWMutex
	conns []*conn             // guarded by mu
	chans map[string]struct{} // guarded by mu
}

func newHub() *hub {
	h := &hub{seed: maphash.MakeSeed(), topics: make(map[string]map[*client]struct{})}
	for i := range h.shards {
		h.shards[i].clients = make(map[string]*client)
	}
	return h
}

func (h *hub) shard(id string) *hubShard {
	return &h.shards[maphash.String(h.seed, id)%uint64(len(h.shards))]
}

// get returns the local client or nil.
func (h *hub) get(id string) *client {
	s := h.shard(id)
	s.mu.RLock()
	c := s.clients[id]
	s.mu.RUnlock()
	return c
}

// count returns the number of sockets id holds here.
func (h *hub) count(id string) int {
	c := h.get(id)
	if c == nil {
		return 0
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.conns)
}

// add attaches a socket; first reports a 0 -> 1 transition of the client.
func (h *hub) add(id, meta string, cn *conn) (c *client, first bool) {
	s := h.shard(id)
	s.mu.Lock()
	c = s.clients[id]
	if c == nil {
		c = &client{id: id, meta: meta, chans: make(map[string]struct{})}
		s.clients[id] = c
		first = true
	}
	c.mu.Lock()
	c.conns = append(c.conns, cn)
	c.mu.Unlock()
	s.mu.Unlock()
	cn.cl = c
	return c, first
}

// remove detaches a socket; last reports a 1 -> 0 transition, after which
// the client is gone from the hub and its channels are returned.
func (h *hub) remove(cn *conn) (last bool, chans []string) {
	c := cn.cl
	s := h.shard(c.id)
	s.mu.Lock()
	c.mu.Lock()
	for i, x := range c.conns {
		if x == cn {
			c.conns = append(c.conns[:i], c.conns[i+1:]...)
			break
		}
	}
	if len(c.conns) == 0 && s.clients[c.id] == c {
		delete(s.clients, c.id)
		last = true
		for ch := range c.chans {
			chans = append(chans, ch)
		}
		clear(c.chans)
	}
	c.mu.Unlock()
	s.mu.Unlock()
	if last {
		h.dropMember(c, chans)
	}
	return last, chans
}

// join records c's membership in chans and returns the channels that got
// their first local member.
func (h *hub) join(c *client, chans []string) (added []string) {
	c.mu.Lock()
	if len(c.conns) == 0 { // already detached
		c.mu.Unlock()
		return nil
	}
	for _, ch := range chans {
		c.chans[ch] = struct{}{}
	}
	c.mu.Unlock()
	h.topicsMu.Lock()
	for _, ch := range chans {
		m := h.topics[ch]
		if m == nil {
			m = make(map[*client]struct{})
			h.topics[ch] = m
			added = append(added, ch)
		}
		m[c] = struct{}{}
	}
	h.topicsMu.Unlock()
	return added
}

// leave removes c from chans and returns the channels left without a local
// member.
func (h *hub) leave(c *client, chans []string) (emptied []string) {
	c.mu.Lock()
	for _, ch := range chans {
		delete(c.chans, ch)
	}
	c.mu.Unlock()
	return h.dropMember(c, chans)
}

// dropMember removes c from the local members of chans and returns the
// channels left without one.
func (h *hub) dropMember(c *client, chans []string) (emptied []string) {
	h.topicsMu.Lock()
	defer h.topicsMu.Unlock()
	for _, ch := range chans {
		if m := h.topics[ch]; m != nil {
			delete(m, c)
			if len(m) == 0 {
				delete(h.topics, ch)
				emptied = append(emptied, ch)
			}
		}
	}
	return emptied
}

// hasTopic reports whether ch has a local member.
func (h *hub) hasTopic(ch string) bool {
	h.topicsMu.RLock()
	defer h.topicsMu.RUnlock()
	return len(h.topics[ch]) > 0
}

// topicNames lists every channel with a local member.
func (h *hub) topicNames() []string {
	h.topicsMu.RLock()
	defer h.topicsMu.RUnlock()
	out := make([]string, 0, len(h.topics))
	for ch := range h.topics {
		out = append(out, ch)
	}
	return out
}

// sendClient queues f on every socket of client id; it reports whether the
// client is here. p is f's position in the client's personal stream (zero
// if it has none).
func (h *hub) sendClient(id string, p wire.Position, f outFrame) bool {
	c := h.get(id)
	if c == nil {
		return false
	}
	return c.sendAt("", p, f) > 0
}

// sendTopic queues f on every socket of every local member of ch; p is f's
// position in the channel's stream (zero if it has none).
func (h *hub) sendTopic(ch string, p wire.Position, f outFrame) int {
	return h.fanOutTopic(ch, func(c *client) int { return c.sendAt(ch, p, f) })
}

// sendAll queues f on every local socket.
func (h *hub) sendAll(f outFrame) int {
	return h.fanOutAll(func(c *client) int { return c.send(f) })
}

// sendTopicRun queues frames fs of ch, at positions ps, on every socket
// of every local member, each socket's run together (conn.deliverRun).
func (h *hub) sendTopicRun(ch string, ps []wire.Position, fs []outFrame) int {
	return h.fanOutTopic(ch, func(c *client) int { return c.sendRun(ch, ps, fs) })
}

// sendAllRun queues broadcast frames fs on every local socket.
func (h *hub) sendAllRun(fs []outFrame) int {
	return h.fanOutAll(func(c *client) int { return c.sendRun("", nil, fs) })
}

// fanOutTopic calls send for every local member of ch, on a snapshot.
func (h *hub) fanOutTopic(ch string, send func(*client) int) int {
	lp := memberLists.Get().(*[]*client)
	members := (*lp)[:0]
	h.topicsMu.RLock()
	for c := range h.topics[ch] {
		members = append(members, c)
	}
	h.topicsMu.RUnlock()
	n := fanOut(members, send)
	putMembers(lp, members)
	return n
}

// fanOutAll calls send for every local client, on a snapshot.
func (h *hub) fanOutAll(send func(*client) int) int {
	lp := memberLists.Get().(*[]*client)
	members := (*lp)[:0]
	h.each(func(c *client) { members = append(members, c) })
	n := fanOut(members, send)
	putMembers(lp, members)
	return n
}

// memberLists holds the member snapshots of fan-outs. A fan-out works on a
// snapshot, not under topicsMu: its sockets are written as it goes
// (sockWriter.writeNow), and a join or leave must not wait for 10,000
// writes, nor other channels' fan-outs behind that join.
var memberLists = sync.Pool{New: func() any { l := make([]*client, 0, 256); return &l }}

func putMembers(lp *[]*client, members []*client) {
	clear(members)
	if cap(members) <= 1<<16 {
		*lp = members[:0]
		memberLists.Put(lp)
	}
}

// fanOutPart is the fewest members a fan-out gives to one core: below it
// starting a goroutine costs more than the writes it spreads.
const fanOutPart = 512

// fanOut calls send for every member and returns the sum. A large fan-out
// is split across the cores, so that the last of 10,000 members is not
// 10,000 writes behind the first: the caller takes the first part and a
// goroutine each takes the others. It returns once every part is done, so
// the next message on the caller's worker cannot overtake this one on any
// socket.
func fanOut(members []*client, send func(*client) int) int {
	parts := min(runtime.GOMAXPROCS(0), len(members)/fanOutPart)
	if parts <= 1 {
		n := 0
		for _, c := range members {
			n += send(c)
		}
		return n
	}
	counts := make([]int, parts)
	var wg sync.WaitGroup
	size := (len(members) + parts - 1) / parts
	for i := parts - 1; i >= 0; i-- {
		part := members[i*size : min(len(members), (i+1)*size)]
		work := func() {
			for _, c := range part {
				counts[i] += send(c)
			}
		}
		if i == 0 {
			work()
			continue
		}
		wg.Add(1)
		go func() { // ends with its part; fanOut waits for it
			defer wg.Done()
			work()
		}()
	}
	wg.Wait()
	n := 0
	for _, c := range counts {
		n += c
	}
	return n
}

// each calls fn for every local client; fn must not call back into the hub.
func (h *hub) each(fn func(c *client)) {
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		for _, c := range s.clients {
			fn(c)
		}
		s.mu.RUnlock()
	}
}

// clientList returns every local client.
func (h *hub) clientList() []*client {
	var out []*client
	h.each(func(c *client) { out = append(out, c) })
	return out
}

// send queues f, a frame of no stream, on every socket of c and returns
// how many took it.
func (c *client) send(f outFrame) int { return c.sendAt("", wire.Position{}, f) }

// sendAt queues f, at position p of stream ch ("" personal), on every
// socket of c (conn.deliver) and returns how many took it.
func (c *client) sendAt(ch string, p wire.Position, f outFrame) int {
	n := 0
	c.mu.RLock()
	for _, cn := range c.conns {
		if cn.deliver(ch, p, f) {
			n++
		}
	}
	c.mu.RUnlock()
	return n
}

// sendRun queues frames fs of stream ch (ps their positions; nil for
// frames of no stream) on every socket of c and returns how many took
// them.
func (c *client) sendRun(ch string, ps []wire.Position, fs []outFrame) int {
	n := 0
	c.mu.RLock()
	for _, cn := range c.conns {
		if cn.deliverRun(ch, ps, fs) {
			n++
		}
	}
	c.mu.RUnlock()
	return n
}

// chanList returns c's channels.
func (c *client) chanList() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]string, 0, len(c.chans))
	for ch := range c.chans {
		out = append(out, ch)
	}
	return out
}

// connList returns a copy of c's sockets.
func (c *client) connList() []*conn {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return append([]*conn(nil), c.conns...)
}
