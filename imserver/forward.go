package imserver

import (
	"time"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// forward.go: while clients move between nodes, a direct message can reach
// the node that now owns a client before the client does (or, from a
// business service with an older view, the node it just left). For a
// while after this node's view of the fleet changed, and whenever its view
// names another node as the receiver's owner (the sender's view and ours
// disagree), a receiver the node does not hold is looked up in Redis and the message passed to the node
// that holds it, as a deliver message, which is never forwarded again. So
// a moved client gets its messages within a hop, not only when it
// reconnects and resumes from history (which still covers anything the
// forward misses: this is a fast path, not the guarantee).

// forward is a receiver a node message named that is not here.
type forward struct {
	to, pos string // pos: the message's position in to's stream, or ""
	frame   []byte // without the position
}

// forwardSlots bounds the forwards in flight; past it, the receiver waits
// for its resume.
const forwardSlots = 32

// forwardWindow is how long after a change of the node set a node
// forwards: until every moved client has been closed (MoveWindow, counted
// from when the old owner sees the change, up to a lease refresh later)
// and has reconnected.
func (s *Server) forwardWindow() time.Duration {
	return s.cfg.LeaseTTL/3 + s.cfg.MoveWindow + 5*time.Second
}

// noteViewChange opens the forwarding window.
func (s *Server) noteViewChange() {
	s.forwardUntil.Store(time.Now().Add(s.forwardWindow()).UnixNano())
}

// forwarding reports whether the window is open.
func (s *Server) forwarding() bool { return time.Now().UnixNano() < s.forwardUntil.Load() }

// forwardMissing looks up where each receiver is online and hands the
// message to that node. It runs off the subscriber worker.
func (s *Server) forwardMissing(fs []forward) {
	select {
	case s.forwardSlots <- struct{}{}:
	default:
		return
	}
	started := s.startGoroutine(func() {
		defer func() { <-s.forwardSlots }()
		for _, f := range fs {
			ctx, cancel := s.redisCtx()
			node, err := s.st.ClientNode(ctx, f.to)
			cancel()
			if err != nil {
				s.metrics.redisErrs.Inc()
				return
			}
			if node == "" || node == s.cfg.NodeID {
				continue
			}
			h := wire.NodeMsg{Version: int(s.peerVersion.Load()), Kind: wire.KindDeliver, To: []string{f.to}}
			if f.pos != "" {
				h.Pos = []string{f.pos}
			}
			s.outbox.push(store.NodeMessage{Node: node, Msg: wire.EncodeNodeMsg(h, f.frame)})
			s.metrics.forwarded.Inc()
		}
	})
	if !started {
		<-s.forwardSlots
	}
}
