package imserver

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// route handles one message from Redis on a subscriber worker. It must
// never wait on Redis: every channel hashed to the same worker would wait.
func (s *Server) route(m store.Message) {
	switch m.Kind {
	case store.ToNode:
		s.handleNodeMsg([]byte(m.Payload))
	case store.ToBroadcast:
		s.metrics.messagesIn.WithLabelValues("broadcast").Inc()
		if f, ok := s.frame(m); ok {
			s.hub.sendAll(f)
		}
	case store.ToChannel:
		s.metrics.messagesIn.WithLabelValues("channel").Inc()
		if f, ok := s.frame(m); ok {
			p, _ := wire.FramePosition(f.b) // zero for a channel without history
			s.hub.sendTopic(m.Channel, p, f)
		}
	}
}

// routeRun handles what a worker took together: a run of consecutive
// channel messages of one channel, or of broadcasts, is fanned out once, so
// that each socket gets the run with one write (conn.deliverRun); anything
// else is routed alone.
func (s *Server) routeRun(ms []store.Message) {
	if len(ms) == 1 {
		s.route(ms[0])
		return
	}
	fs := make([]outFrame, 0, len(ms))
	var ps []wire.Position
	for _, m := range ms {
		f, ok := s.frame(m)
		if !ok {
			continue
		}
		fs = append(fs, f)
		if m.Kind == store.ToChannel {
			s.metrics.messagesIn.WithLabelValues("channel").Inc()
			p, _ := wire.FramePosition(f.b)
			ps = append(ps, p)
		} else {
			s.metrics.messagesIn.WithLabelValues("broadcast").Inc()
		}
	}
	switch {
	case len(fs) == 0:
	case ms[0].Kind == store.ToChannel:
		s.hub.sendTopicRun(ms[0].Channel, ps, fs)
	default:
		s.hub.sendAllRun(fs)
	}
}

// frame checks a channel or broadcast frame before it reaches browsers.
func (s *Server) frame(m store.Message) (outFrame, bool) {
	f := []byte(m.Payload)
	if !wire.ValidFrame(f) {
		s.malformed(m, wire.ErrMalformed)
		return outFrame{}, false
	}
	return outFrame{b: f, ts: wire.FrameTS(f)}, true
}

func (s *Server) malformed(m store.Message, err error) {
	if errors.Is(err, wire.ErrUnknownVersion) {
		s.metrics.unknownVersion.Inc()
	} else {
		s.metrics.malformed.Inc()
	}
	s.log.Warn("ignored a message from redis", "kind", m.Kind, "channel", m.Channel, "err", err)
}

func (s *Server) handleNodeMsg(payload []byte) {
	h, frames, err := wire.DecodeNodeMsg(payload)
	if err != nil {
		s.malformed(store.Message{Kind: store.ToNode}, err)
		return
	}
	s.metrics.messagesIn.WithLabelValues(h.Kind).Inc()
	switch h.Kind {
	case wire.KindSend:
		var echo []byte
		if h.Echo != "" {
			echo = frames[1]
		}
		s.handleSend(&h, frames[0], echo)
	case wire.KindBatch:
		// Each carried send exactly as if it had come on its own, in
		// order: the batch only saves the publishes.
		for i := range h.Sends {
			b := &h.Sends[i]
			s.handleSend(&b.Header, b.Frame, b.Echo)
		}
	case wire.KindDeliver:
		for _, fb := range frames {
			f := outFrame{b: fb, ts: wire.FrameTS(fb)}
			for i, to := range h.To {
				p, pf := positioned(f, h.Pos, i)
				s.hub.sendClient(to, p, pf)
			}
		}
	case wire.KindJoin:
		chans, pos := validChans(h.Chans, h.Pos)
		s.applyJoin(h.Client, chans, pos)
	case wire.KindLeave:
		chans, _ := validChans(h.Chans, nil)
		s.applyLeave(h.Client, chans)
	case wire.KindKick:
		s.closeClient(h.Client, wire.CloseForcedOffline, "forced offline", wire.ReasonKicked)
	case wire.KindProbe:
		if h.Nonce == s.cfg.NodeID {
			s.sub.probeSeen()
		}
	}
}

// handleSend delivers one send (a send node message, or one a batch
// carries): frame to every local socket of each receiver, with its
// position; echo (set exactly when h.Echo is) to the sender's sockets;
// receipts to the sender; and receivers not here forwarded while the
// fleet changes.
func (s *Server) handleSend(h *wire.NodeMsg, frame, echo []byte) {
	f := outFrame{b: frame, ts: wire.FrameTS(frame)}
	var receipts [][]byte
	var missing []forward
	fwd := s.forwarding()
	for i, to := range h.To {
		p, pf := positioned(f, h.Pos, i)
		ok := s.hub.sendClient(to, p, pf)
		// Forward while the fleet changes, and whenever our view says
		// another node owns the receiver (the sender's view and ours
		// disagree: something is moving, and we may be the one that
		// has not seen it yet).
		if !ok && (fwd || wire.Owner(to, s.liveNodes()) != s.cfg.NodeID) {
			missing = append(missing, forward{to: to, pos: p.String(), frame: frame})
		}
		if h.Receipt != "" {
			st := wire.StatusOffline
			if ok {
				st = wire.StatusDelivered
			}
			receipts = append(receipts, wire.ReceiptFrame(h.ID, to, st))
		}
	}
	if h.Echo != "" {
		ep, _ := wire.ParsePosition(h.EchoPos)
		s.hub.sendClient(h.Echo, ep, withPosition(outFrame{b: echo, ts: f.ts}, ep))
	}
	if len(receipts) > 0 {
		s.sendReceipts(h.Receipt, receipts)
	}
	if len(missing) > 0 {
		s.forwardMissing(missing)
	}
}

// positioned is receiver i's copy of a frame whose positions (parallel to
// the receivers) a node message carries: the frame with its position
// spliced in, or the frame itself where there is none.
func positioned(f outFrame, pos []string, i int) (wire.Position, outFrame) {
	if i >= len(pos) || pos[i] == "" {
		return wire.Position{}, f
	}
	p, err := wire.ParsePosition(pos[i]) // checked by DecodeNodeMsg
	if err != nil {
		return wire.Position{}, f
	}
	return p, withPosition(f, p)
}

func withPosition(f outFrame, p wire.Position) outFrame {
	if p.IsZero() {
		return f
	}
	return outFrame{b: wire.AppendPosition(f.b, p), ts: f.ts}
}

// validChans keeps the valid channel names of a join or leave, with their
// positions (pos parallel to chans, or empty).
func validChans(chans, pos []string) ([]string, []string) {
	out := chans[:0:0]
	var outPos []string
	for i, c := range chans {
		if wire.ValidateChannel(c) == nil {
			out = append(out, c)
			if i < len(pos) {
				outPos = append(outPos, pos[i])
			}
		}
	}
	return out, outPos
}

// sendReceipts delivers receipt frames to the sender's sockets: locally if
// the sender is here, else through the outbox to the sender's owner.
func (s *Server) sendReceipts(sender string, frames [][]byte) {
	if s.hub.get(sender) != nil {
		for _, fb := range frames {
			s.hub.sendClient(sender, wire.Position{}, outFrame{b: fb})
		}
		return
	}
	owner := wire.Owner(sender, s.liveNodes())
	if owner == s.cfg.NodeID {
		return // the sender is offline
	}
	h := wire.NodeMsg{Version: int(s.peerVersion.Load()), Kind: wire.KindDeliver, To: []string{sender}}
	msg := wire.EncodeNodeMsg(h, frames...)
	s.outbox.push(store.NodeMessage{Node: owner, Msg: msg})
}

// closeClient closes every socket of a local client with code.
func (s *Server) closeClient(id string, code int, msg, reason string) {
	if c := s.hub.get(id); c != nil {
		for _, cn := range c.connList() {
			cn.close(websocket.StatusCode(code), msg, reason)
		}
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

// moveLater closes client id with the moved code at a random moment within
// MoveWindow after minDelay, if by then it is still owned by another node.
// The timer's callback does not block: closing starts a tracked goroutine.
func (s *Server) moveLater(id string, minDelay time.Duration) {
	delay := minDelay + time.Duration(rand.Int64N(int64(s.cfg.MoveWindow)))
	time.AfterFunc(delay, func() {
		if s.draining.Load() || wire.Owner(id, s.liveNodes()) == s.cfg.NodeID {
			return
		}
		s.closeClient(id, wire.CloseMoved, "moved to another node", wire.ReasonMoved)
	})
}
