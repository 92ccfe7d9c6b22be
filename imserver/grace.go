package imserver

import (
	"context"
	"time"

	"github.com/imbroker/imbroker/internal/wire"
)

// grace.go: the offline grace. When a client's last socket here closes for
// any reason but its own normal close (1000) or ForceOffline, its presence
// and channel memberships stay in Redis for OfflineGrace. A reconnect
// within it, here or on another node (a move, a drain, a crash of this
// node, a network drop), then finds the client online: no offline/online
// event pair, rooms kept. When the grace ends without a reconnect here,
// offline.lua runs as it would have at the close; it emits the offline
// event only if no other node holds the client by then.

// graceEntry is a client whose last socket closed here within the grace.
type graceEntry struct {
	id, meta, reason string
	chans            []string
	timer            *time.Timer
}

// graceApplies reports whether a last socket closed this way keeps the
// client's presence for the grace.
func (s *Server) graceApplies(cn *conn, reason string) bool {
	return s.cfg.OfflineGrace > 0 && reason != wire.ReasonKicked && !cn.peerNormal.Load()
}

// deferOffline starts the grace of client id; the caller holds its stripe.
func (s *Server) deferOffline(id, meta, reason string, chans []string) {
	e := &graceEntry{id: id, meta: meta, reason: reason, chans: chans}
	s.graceMu.Lock()
	if old := s.grace[id]; old != nil && old.timer.Stop() {
		s.graceWG.Done()
	}
	s.grace[id] = e
	s.graceWG.Add(1)
	e.timer = time.AfterFunc(s.cfg.OfflineGrace, func() {
		if !s.startGoroutine(func() { s.endGrace(e, "expired") }) {
			s.graceWG.Done() // stopping: the drain flushes or a reap cleans
		}
	})
	s.graceMu.Unlock()
}

// cancelGrace ends the grace of a client that came back on this node; the
// caller holds its stripe. Its presence in Redis was never removed.
func (s *Server) cancelGrace(id string) {
	s.graceMu.Lock()
	e := s.grace[id]
	if e != nil && e.timer.Stop() {
		delete(s.grace, id)
		s.graceWG.Done()
		s.metrics.graceEnds.WithLabelValues("back").Inc()
	}
	s.graceMu.Unlock()
}

// inGrace reports whether id's grace runs (resync leaves such a client's
// presence alone).
func (s *Server) inGrace(id string) bool {
	s.graceMu.Lock()
	defer s.graceMu.Unlock()
	return s.grace[id] != nil
}

// endGrace marks the client offline unless it came back here meanwhile.
func (s *Server) endGrace(e *graceEntry, how string) {
	defer s.graceWG.Done()
	mu := s.lockStripe(e.id)
	defer mu.Unlock()
	s.graceMu.Lock()
	current := s.grace[e.id] == e
	if current {
		delete(s.grace, e.id)
	}
	s.graceMu.Unlock()
	if !current || s.hub.get(e.id) != nil {
		return
	}
	s.metrics.graceEnds.WithLabelValues(how).Inc()
	if _, err := s.markOffline(e.id, e.meta, s.cfg.NodeID, e.reason, e.chans, false); err != nil {
		s.log.Warn("failed to mark client offline; will resync", "client", e.id, "err", err)
		s.markDirty()
	}
}

// flushGrace, in a drain, waits for the graces to end by themselves (the
// clients have reconnected elsewhere by then, so offline.lua only drops
// this node's entries) and ends the rest at once when ctx is about to end.
func (s *Server) flushGrace(ctx context.Context) {
	done := make(chan struct{})
	go func() { s.graceWG.Wait(); close(done) }()
	var deadline <-chan time.Time
	if dl, ok := ctx.Deadline(); ok {
		// Keep a second of the drain for the flush itself.
		t := time.NewTimer(time.Until(dl) - time.Second)
		defer t.Stop()
		deadline = t.C
	}
	// A client that is online on another node by now has nothing left to
	// wait for: end its grace at once (offline.lua only drops this node's
	// entries), so that a drain whose clients all reconnected ends soon.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-done:
			return
		case <-deadline:
			break wait
		case <-ctx.Done():
			break wait
		case <-tick.C:
			s.endMovedGraces(ctx)
		}
	}
	s.graceMu.Lock()
	var early []*graceEntry
	for _, e := range s.grace {
		if e.timer.Stop() {
			early = append(early, e)
		}
	}
	s.graceMu.Unlock()
	for _, e := range early {
		s.endGrace(e, "flushed")
	}
	<-done
}

// endMovedGraces ends the graces of the clients Redis has online on
// another node.
func (s *Server) endMovedGraces(ctx context.Context) {
	s.graceMu.Lock()
	pending := make([]*graceEntry, 0, len(s.grace))
	for _, e := range s.grace {
		pending = append(pending, e)
	}
	s.graceMu.Unlock()
	for _, e := range pending {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout)
		node, err := s.st.ClientNode(cctx, e.id)
		cancel()
		if err != nil {
			return
		}
		if node != "" && node != s.cfg.NodeID && e.timer.Stop() {
			s.endGrace(e, "flushed")
		}
	}
}
