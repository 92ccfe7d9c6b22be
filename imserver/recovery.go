package imserver

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// recovery.go: each socket's place in the history streams it reads (its
// personal stream and its channels'), the hold that keeps live frames back
// while what the socket missed is read from Redis, and the fill loop that
// replays it. A fill runs when a socket connects (resume, or the position
// its token recorded), after a join (from the channel's position at join
// time), when a live frame shows a gap (a dropped or never-published
// message, a new epoch), and for every socket after the node resubscribed
// or dropped messages under overload (sweepStreams). docs/protocol.md,
// "History and resume", states the contract.

// socketStreams is the history state of one socket.
type socketStreams struct {
	// holding is set while a fill runs: every frame for the socket is
	// held back in held and admitted, in order, once the fill is done. It
	// is read without mu on the path of frames without a position.
	holding atomic.Bool

	mu        sync.Mutex
	filling   bool                     // a fill loop runs (runFills); guarded by mu
	sentFirst bool                     // the first recovered frame went out; guarded by mu
	own       wire.Position            // personal stream; zero until known; guarded by mu
	chans     map[string]wire.Position // channel streams; guarded by mu
	// loose marks the streams whose last read failed (Redis down or a
	// master failing over): the socket was told recovered:false, so the
	// next frame past its position is taken as given, without a fill, but
	// the position stays as a floor below which a frame is a duplicate (a
	// publish retried, a replay and its live copy). Cleared whenever the
	// position moves; guarded by mu.
	loose     map[string]bool
	held      []heldFrame   // guarded by mu
	heldBytes int           // guarded by mu
	fills     []fillRequest // waiting for the fill loop; guarded by mu
}

// heldFrame is a frame that arrived while the socket was held; ch is ""
// for the personal stream, p zero for a frame without a position.
type heldFrame struct {
	ch string
	p  wire.Position
	f  outFrame
}

// fillRequest asks the fill loop to replay stream ch from position from.
// lost reports that the socket certainly missed messages (the stream's
// epoch changed under it): the stream is then reported recovered:false even
// though what the new epoch kept is replayed. ready, if set, is closed when
// the read may start (the channel's topic is subscribed).
type fillRequest struct {
	ch    string
	from  wire.Position
	lost  bool
	ready <-chan struct{}
}

func (st *socketStreams) get(ch string) (wire.Position, bool) {
	if ch == "" {
		return st.own, !st.own.IsZero()
	}
	p, ok := st.chans[ch]
	return p, ok
}

func (st *socketStreams) set(ch string, p wire.Position) {
	delete(st.loose, ch)
	if ch == "" {
		st.own = p
		return
	}
	if st.chans == nil {
		st.chans = make(map[string]wire.Position)
	}
	st.chans[ch] = p
}

// forget drops the socket's position in channels it left.
func (c *conn) forget(chans []string) {
	st := &c.hist
	st.mu.Lock()
	for _, ch := range chans {
		delete(st.chans, ch)
		delete(st.loose, ch)
	}
	st.mu.Unlock()
}

// wantFillLocked queues a fill and holds the socket; it reports whether
// the caller must start the fill loop.
func (st *socketStreams) wantFillLocked(r fillRequest) (start bool) {
	st.fills = append(st.fills, r)
	st.holding.Store(true)
	if st.filling {
		return false
	}
	st.filling = true
	return true
}

// deliver queues a frame of stream ch (p is its position, zero if it has
// none) on the socket: held while a fill runs, dropped if the socket has
// it already, and a gap before it starts a fill. It never blocks.
func (c *conn) deliver(ch string, p wire.Position, f outFrame) bool {
	st := &c.hist
	if p.IsZero() && !st.holding.Load() {
		return c.enqueue(f)
	}
	st.mu.Lock()
	if st.holding.Load() {
		ok := st.holdLocked(c, heldFrame{ch, p, f})
		st.mu.Unlock()
		return ok
	}
	ok, start := c.admitLocked(heldFrame{ch, p, f}, false)
	st.mu.Unlock()
	if start {
		c.srv.startFills(c)
	}
	return ok
}

// deliverRun is deliver for frames of one stream that arrived together
// (ps their positions, nil or parallel to fs). Frames without positions on
// a socket not held go out with one write (sockWriter.enqueueRun); others
// take deliver's way one by one, through the writer goroutine so that
// they still leave in one batch.
func (c *conn) deliverRun(ch string, ps []wire.Position, fs []outFrame) bool {
	positioned := false
	for _, p := range ps {
		positioned = positioned || !p.IsZero()
	}
	if !positioned && !c.hist.holding.Load() {
		return c.w.enqueueRun(fs)
	}
	c.w.bursts.Add(1)
	defer c.w.bursts.Add(-1)
	ok := false
	for i, f := range fs {
		var p wire.Position
		if i < len(ps) {
			p = ps[i]
		}
		ok = c.deliver(ch, p, f) || ok
	}
	return ok
}

// holdLocked keeps a frame back; past the socket's queue bound the socket
// is a slow consumer like one whose queue overflows.
func (st *socketStreams) holdLocked(c *conn, h heldFrame) bool {
	if st.heldBytes+len(h.f.b) > c.srv.cfg.MaxQueueBytes {
		st.held, st.heldBytes = nil, 0
		c.w.onSlow()
		return false
	}
	st.held = append(st.held, h)
	st.heldBytes += len(h.f.b)
	return true
}

// admitLocked writes a frame in stream order: a frame of a stream the
// socket has no position in sets it; one at or before the position is a
// duplicate; the next one goes out; one further on, or of another epoch,
// is held and starts a fill from the position. read reports that a fill
// has just read the frame's stream and left the socket in its current
// epoch: a frame of another epoch is then one of a history Redis lost
// (the socket was told recovered:false when it moved on). No replay holds
// it, so it goes out, and the position stays in the current epoch.
// On a loose stream (its last read failed) the next frame past the
// position goes out and sets it; one at or before it is a duplicate.
func (c *conn) admitLocked(h heldFrame, read bool) (ok, startFill bool) {
	st := &c.hist
	if h.p.IsZero() {
		return c.enqueue(h.f), false
	}
	cur, known := st.get(h.ch)
	switch {
	case !known:
		st.set(h.ch, h.p)
		return c.enqueue(h.f), false
	case st.loose[h.ch] && h.p.Epoch == cur.Epoch && h.p.Offset <= cur.Offset:
		c.srv.metrics.duplicates.Inc()
		return true, false
	case st.loose[h.ch]:
		st.set(h.ch, h.p)
		return c.enqueue(h.f), false
	case h.p.Epoch != cur.Epoch && read:
		return c.enqueue(h.f), false
	case h.p.Epoch != cur.Epoch:
		// The stream's history was lost and began again: replay what the
		// new epoch kept before this frame, and say recovered:false.
		st.holdLocked(c, h)
		return true, st.wantFillLocked(fillRequest{ch: h.ch, from: wire.Position{Epoch: h.p.Epoch}, lost: true})
	case h.p.Offset <= cur.Offset:
		c.srv.metrics.duplicates.Inc()
		return true, false
	case h.p.Offset == cur.Offset+1:
		st.set(h.ch, h.p)
		return c.enqueue(h.f), false
	default:
		c.srv.metrics.gaps.Inc()
		st.holdLocked(c, h)
		return true, st.wantFillLocked(fillRequest{ch: h.ch, from: cur})
	}
}

// requestFills queues fills for a socket and starts its fill loop if none
// runs.
func (s *Server) requestFills(c *conn, reqs ...fillRequest) {
	st := &c.hist
	st.mu.Lock()
	start := false
	for _, r := range reqs {
		start = st.wantFillLocked(r) || start
	}
	st.mu.Unlock()
	if start {
		s.startFills(c)
	}
}

// startFills runs the socket's fill loop in a tracked goroutine.
func (s *Server) startFills(c *conn) {
	if !s.startGoroutine(func() { s.runFills(c) }) {
		s.runFills(c) // stopping: release what is held, without Redis
	}
}

// runFills replays what each queued fill asks for, then sends the
// recovered frame (always the socket's first frame, and later whenever a
// stream could not be recovered) and admits the frames held meanwhile. It
// loops while fills are queued, so at most one runs per socket.
func (s *Server) runFills(c *conn) {
	st := &c.hist
	for {
		st.mu.Lock()
		reqs := st.fills
		st.fills = nil
		st.mu.Unlock()

		var reads []store.HistoryRead
		var err error
		if len(reqs) > 0 {
			reads, err = s.readFills(c, reqs)
		}

		c.w.bursts.Add(1) // replays and held frames leave in batches
		st.mu.Lock()
		var states []wire.StreamState
		read := make(map[string]bool, len(reqs))
		if len(reqs) > 0 {
			states = s.applyFills(c, reqs, reads, err)
			for _, r := range reqs {
				read[r.ch] = err == nil
			}
		}
		switch {
		case !st.sentFirst:
			st.sentFirst = true
			c.enqueue(outFrame{b: wire.RecoveredFrame(true, states)})
		case anyLost(states):
			c.enqueue(outFrame{b: wire.RecoveredFrame(false, lostOnly(states))})
		}
		if len(st.fills) == 0 {
			held := st.held
			st.held, st.heldBytes = nil, 0
			st.holding.Store(false)
			for i, h := range held {
				if st.holding.Load() { // a gap: keep the rest behind it
					st.held = append(st.held, held[i:]...)
					for _, r := range held[i:] {
						st.heldBytes += len(r.f.b)
					}
					break
				}
				c.admitLocked(h, read[h.ch])
			}
		}
		if len(st.fills) == 0 {
			st.filling = false
			st.mu.Unlock()
			c.w.bursts.Add(-1)
			return
		}
		st.mu.Unlock()
		c.w.bursts.Add(-1)
	}
}

// readFills reads every requested stream in one round trip, once each
// request's topic is subscribed.
func (s *Server) readFills(c *conn, reqs []fillRequest) ([]store.HistoryRead, error) {
	for _, r := range reqs {
		if r.ready != nil {
			select {
			case <-r.ready:
			case <-s.ctx.Done():
				return nil, s.ctx.Err()
			}
		}
	}
	select {
	case s.fillSlots <- struct{}{}:
		defer func() { <-s.fillSlots }()
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
	hr := make([]store.HistoryRequest, len(reqs))
	for i, r := range reqs {
		stream := store.Stream{Client: c.cl.id}
		if r.ch != "" {
			stream = store.Stream{Channel: r.ch}
		}
		hr[i] = store.HistoryRequest{Stream: stream, After: r.from.Offset, Limit: s.cfg.MaxRecovery}
	}
	ctx, cancel := s.redisCtx()
	defer cancel()
	reads, err := s.st.ReadHistory(ctx, hr...)
	if err != nil {
		s.metrics.redisErrs.Inc()
		s.log.Warn("history read failed; the socket is told recovered:false", "client", c.cl.id, "err", err)
	}
	return reads, err
}

// applyFills writes each stream's replay to the socket and moves its
// position to the stream's top; it returns each stream's state for the
// recovered frame. A stream is recovered if every message after the
// position was still kept (same epoch, contiguous, not expired, at most
// MaxRecovery); otherwise nothing of it is replayed. The caller holds mu.
func (s *Server) applyFills(c *conn, reqs []fillRequest, reads []store.HistoryRead, err error) []wire.StreamState {
	st := &c.hist
	out := make([]wire.StreamState, 0, len(reqs))
	for i, r := range reqs {
		state := wire.StreamState{Channel: r.ch}
		if err != nil {
			// Redis failed: the socket cannot know what it missed, and
			// is told recovered:false. The next frame past its position
			// is taken as given (no fill per frame while Redis is down);
			// the position stays as the floor of duplicates, and the next
			// sweep reads from it again.
			state.Pos = r.from
			if _, ok := st.get(r.ch); ok {
				if st.loose == nil {
					st.loose = make(map[string]bool)
				}
				st.loose[r.ch] = true
			}
			out = append(out, state)
			s.metrics.recoveries.WithLabelValues("error").Inc()
			continue
		}
		h := reads[i]
		from, lost := r.from, r.lost
		if cur, ok := st.get(r.ch); ok && cur.Epoch == h.Top.Epoch {
			// The socket stands in the stream's current epoch already: it
			// was told of any earlier loss when it got there, and it holds
			// everything up to cur. A request from another epoch or from
			// before cur is stale (queued before the socket moved on).
			if from.Epoch != cur.Epoch || cur.Offset > from.Offset {
				from = cur
			}
			lost = false
		}
		state.Pos = h.Top
		switch {
		case h.Top.Offset > 0 && (h.Top.Epoch != from.Epoch || lost):
			// The stream's history began again (Redis lost it): the socket
			// is told recovered:false and stands at the new epoch's start;
			// a fill from there replays what the new epoch holds, after the
			// recovered frame, so that a client learns of the loss before
			// it sees the new epoch's frames.
			start := wire.Position{Epoch: h.Top.Epoch}
			st.set(r.ch, start)
			st.fills = append(st.fills, fillRequest{ch: r.ch, from: start})
			state.Pos = start // the replay follows this frame
			s.metrics.recoveries.WithLabelValues("lost").Inc()
			out = append(out, state)
			continue
		case h.Top.Epoch != from.Epoch || from.Offset > h.Top.Offset:
		case from.Offset == h.Top.Offset:
			state.Recovered = !lost
		case contiguous(h, from.Offset):
			for _, e := range h.Entries {
				if e.Offset <= from.Offset {
					continue
				}
				p := wire.Position{Epoch: h.Top.Epoch, Offset: e.Offset}
				c.enqueue(outFrame{b: wire.AppendPosition(e.Frame, p), ts: wire.FrameTS(e.Frame)})
				s.metrics.replayed.Inc()
			}
			state.Recovered = !lost
		case from != r.from:
			// The read began elsewhere than where the socket stands (a
			// stale request): read again from there before judging.
			st.fills = append(st.fills, fillRequest{ch: r.ch, from: from})
			continue
		}
		st.set(r.ch, h.Top)
		if state.Recovered {
			s.metrics.recoveries.WithLabelValues("recovered").Inc()
		} else {
			s.metrics.recoveries.WithLabelValues("lost").Inc()
		}
		out = append(out, state)
	}
	return out
}

// contiguous reports that h holds every message after offset up to its
// top, none of them expired. The read may start before offset (the socket
// got further while it ran); those entries are skipped.
func contiguous(h store.HistoryRead, after uint64) bool {
	next := after + 1
	for _, e := range h.Entries {
		if e.Offset < next {
			continue
		}
		if e.Offset != next || e.Expires < h.Now || len(e.Frame) == 0 || e.Frame[0] != '{' {
			return false
		}
		next++
	}
	return next == h.Top.Offset+1
}

func anyLost(states []wire.StreamState) bool {
	for _, s := range states {
		if !s.Recovered {
			return true
		}
	}
	return false
}

func lostOnly(states []wire.StreamState) []wire.StreamState {
	var out []wire.StreamState
	for _, s := range states {
		if !s.Recovered {
			out = append(out, s)
		}
	}
	return out
}

// resumeFills is what a new socket replays: from the position the client
// presented for each stream, else from the one its token recorded. Only
// the client's channels count.
func resumeFills(res wire.Resume, rec wire.TokenRecord, chans []string) []fillRequest {
	var out []fillRequest
	own := res.Client
	if own.IsZero() {
		own, _ = wire.ParsePosition(rec.Pos)
	}
	if !own.IsZero() {
		out = append(out, fillRequest{from: own})
	}
	for _, ch := range chans {
		p, ok := res.Channels[ch]
		if !ok {
			p, _ = wire.ParsePosition(rec.ChanPos[ch])
		}
		if !p.IsZero() {
			out = append(out, fillRequest{ch: ch, from: p})
		}
	}
	return out
}

// sweepStreams fills every local socket from its positions: after the
// node resubscribed (everything published meanwhile was lost to pub/sub)
// or dropped messages under overload. Calls while one is pending are
// folded into it; one runs at most every sweepEvery.
func (s *Server) sweepStreams(why string) {
	if !s.sweepPending.CompareAndSwap(false, true) {
		return
	}
	s.startGoroutine(func() {
		if wait := time.Until(time.Unix(0, s.lastSweep.Load()).Add(sweepEvery)); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
		}
		s.sweepPending.Store(false)
		s.lastSweep.Store(time.Now().UnixNano())
		lostClients, lostChans, lostAll := s.losses.take()
		n, told := 0, 0
		for _, cl := range s.hub.clientList() {
			for _, c := range cl.connList() {
				if reqs := c.positionFills(); len(reqs) > 0 {
					s.requestFills(c, reqs...)
					n++
				}
			}
			if cl.tellLosses(lostClients, lostChans, lostAll) {
				told++
			}
		}
		s.metrics.sweeps.WithLabelValues(why).Inc()
		s.log.Info("filling every socket's streams", "why", why, "sockets", n, "clients told of unkept losses", told)
	})
}

const sweepEvery = time.Second

// positionFills asks to fill each stream the socket has a position in.
func (c *conn) positionFills() []fillRequest {
	st := &c.hist
	st.mu.Lock()
	defer st.mu.Unlock()
	var out []fillRequest
	if !st.own.IsZero() {
		out = append(out, fillRequest{from: st.own})
	}
	for ch, p := range st.chans {
		out = append(out, fillRequest{ch: ch, from: p})
	}
	return out
}

// joinFills replays, on every socket of client id, what the joined
// channels kept from their positions at join time (pos parallel to chans,
// "" for a channel without history), once ready is closed.
func (s *Server) joinFills(c *client, chans, pos []string, ready <-chan struct{}) {
	var reqs []fillRequest
	for i, ch := range chans {
		if i >= len(pos) {
			break
		}
		if p, err := wire.ParsePosition(pos[i]); err == nil && !p.IsZero() {
			reqs = append(reqs, fillRequest{ch: ch, from: p, ready: ready})
		}
	}
	if len(reqs) == 0 {
		return
	}
	for _, cn := range c.connList() {
		s.requestFills(cn, reqs...)
	}
}
