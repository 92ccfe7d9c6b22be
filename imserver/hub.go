package imserver

import (
	"hash/maphash"
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
	n := 0
	h.topicsMu.RLock()
	for c := range h.topics[ch] {
		n += c.sendAt(ch, p, f)
	}
	h.topicsMu.RUnlock()
	return n
}

// sendAll queues f on every local socket.
func (h *hub) sendAll(f outFrame) int {
	n := 0
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		for _, c := range s.clients {
			n += c.send(f)
		}
		s.mu.RUnlock()
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
