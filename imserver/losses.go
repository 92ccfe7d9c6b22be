package imserver

import (
	"strings"
	"sync"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// unkeptLosses records who missed a message the node dropped under
// overload (subscriber.dispatch) that no history stream keeps, so that the
// next sweep can tell them: their sockets are sent a recovered frame
// listing the stream as recovered:false with no position. (A dropped
// message that a stream kept is filled from it by the same sweep.) Personal
// messages and broadcasts are reported as the personal stream (""),
// channel messages as their channel. Nothing dropped is then silent.
type unkeptLosses struct {
	mu      sync.Mutex
	dropped []store.Message // guarded by mu
	all     bool            // more drops than lossTrackMax: tell everyone; guarded by mu
}

// lossTrackMax bounds the dropped messages kept for the sweep to read;
// past it every local socket is told.
const lossTrackMax = 1 << 14

// note keeps a dropped message for the sweep. It runs in rueidis' reader,
// which must not slow down (Redis cuts a subscriber that falls 32 MB
// behind), so the message is only set aside here and read by the sweep.
func (l *unkeptLosses) note(m store.Message) {
	if m.Kind == store.ToNode && keptAll(m.Payload) {
		return // every copy is in a stream: the sweep fills it
	}
	l.mu.Lock()
	if len(l.dropped) < lossTrackMax {
		l.dropped = append(l.dropped, m)
	} else {
		l.all = true
	}
	l.mu.Unlock()
}

// take returns who missed a message that no stream kept, and starts over:
// clients by id (personal messages and echo copies), channels by name,
// and all for a broadcast or for more drops than were kept.
func (l *unkeptLosses) take() (clients, chans map[string]struct{}, all bool) {
	l.mu.Lock()
	dropped, all := l.dropped, l.all
	l.dropped, l.all = nil, false
	l.mu.Unlock()
	clients, chans = make(map[string]struct{}), make(map[string]struct{})
	for _, m := range dropped {
		switch m.Kind {
		case store.ToBroadcast:
			all = true
		case store.ToChannel:
			if p, _ := wire.FramePosition([]byte(m.Payload)); p.IsZero() {
				chans[m.Channel] = struct{}{}
			}
		case store.ToNode:
			h, _, err := wire.DecodeNodeMsg([]byte(m.Payload))
			if err != nil || (h.Kind != wire.KindSend && h.Kind != wire.KindDeliver) {
				continue
			}
			for i, to := range h.To {
				if i >= len(h.Pos) || h.Pos[i] == "" {
					clients[to] = struct{}{}
				}
			}
			if h.Echo != "" && h.EchoPos == "" {
				clients[h.Echo] = struct{}{}
			}
		}
	}
	return clients, chans, all
}

// tellLosses sends each socket of c a recovered frame listing, as
// recovered:false with no position, the streams in which it missed a
// message that was not kept (a socket's position in the stream, if it has
// one, is untouched: the lost message was never in the stream). It
// reports whether it sent one.
func (c *client) tellLosses(clients, chans map[string]struct{}, all bool) bool {
	var states []wire.StreamState
	if _, ok := clients[c.id]; ok || all {
		states = append(states, wire.StreamState{})
	}
	if len(chans) > 0 {
		for _, ch := range c.chanList() {
			if _, ok := chans[ch]; ok {
				states = append(states, wire.StreamState{Channel: ch})
			}
		}
	}
	if len(states) == 0 {
		return false
	}
	f := outFrame{b: wire.RecoveredFrame(false, states)}
	return c.send(f) > 0
}

// keptAll reports, from the header line alone, a node message whose every
// copy has a position: it lists positions and none is empty. Only the
// others need decoding; a sweep after a long overload may read thousands.
func keptAll(msg string) bool {
	head, _, _ := strings.Cut(msg, "\n")
	return strings.Contains(head, `"pos":`) && !strings.Contains(head, `""`)
}
