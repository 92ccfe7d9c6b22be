package imserver_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/wire"
)

// TestDeliveryOverflow: a node whose subscriber queue holds one message
// drops what Redis pushes faster than it routes; with history on, every
// drop becomes a delay. The node fills each socket from its stream, so
// every client gets every message sent to it exactly once, in offset
// order, and is never told recovered:false.
func TestDeliveryOverflow(t *testing.T) {
	c := startProcCluster(t)
	p := c.startProc("o1", "-subscriber-queue", "1")
	c.waitProcViews(p)
	// Streams that hold every message sent: with imhelper's default 100 a
	// fill that a busy machine delays past 100 messages would rightly say
	// recovered:false.
	im := procHelper(t, c, deliveryHistory, "o1")
	const receivers, senders, maxSends = 8, 16, 40000
	clients := make([]*wsClient, receivers)
	ids := make([]string, receivers)
	for i := range clients {
		ids[i] = fmt.Sprintf("ov-%d", i)
		clients[i] = c.connect(ids[i], "")
	}

	// Each receiver's reader checks its stream as frames arrive (a reader
	// that lagged would make the node close it as a slow consumer).
	type result struct {
		got  map[int]int // message number → copies received
		err  error
		last uint64
	}
	results := make([]result, receivers)
	var readers sync.WaitGroup
	for i, w := range clients {
		readers.Add(1)
		go func() {
			defer readers.Done()
			r := &results[i]
			r.got = make(map[int]int)
			for {
				var f frame
				select {
				case f = <-w.frames:
				case <-w.done:
					r.err = fmt.Errorf("%s closed", w.id)
					return
				}
				switch {
				case f.Type == "recovered":
					for _, s := range f.Streams {
						if !s.Recovered {
							r.err = fmt.Errorf("%s told recovered:false: %+v", w.id, f)
							return
						}
					}
					continue
				case f.Type != "message":
					r.err = fmt.Errorf("%s got %+v", w.id, f)
					return
				}
				var body struct {
					K   int  `json:"k"`
					End bool `json:"end"`
				}
				if err := json.Unmarshal(f.Data, &body); err != nil {
					r.err = err
					return
				}
				if f.Offset != r.last+1 && r.last != 0 {
					r.err = fmt.Errorf("%s: offset %d after %d", w.id, f.Offset, r.last)
					return
				}
				r.last = f.Offset
				if body.End {
					return
				}
				r.got[body.K]++
			}
		}()
	}

	sent := sendUntilOverflow(t, p, im, ids, senders, maxSends)
	overflow := p.metric(t, "im_pubsub_overflow_total")
	if _, err := im.SendMessage(bg, "s", ids, `{"end":true}`); err != nil {
		t.Fatal(err)
	}
	readers.Wait()
	for i, r := range results {
		if r.err != nil {
			t.Fatal(r.err)
		}
		for k, n := range r.got {
			if n != 1 || !sent[k] {
				t.Fatalf("%s got message %d %d times (sent: %v)", ids[i], k, n, sent[k])
			}
		}
		if len(r.got) != len(sent) {
			t.Fatalf("%s got %d of %d messages", ids[i], len(r.got), len(sent))
		}
		if r.last != uint64(len(sent)+1) {
			t.Fatalf("%s: the end marker at offset %d after %d messages", ids[i], r.last, len(sent))
		}
	}
	t.Logf("%d messages to each of %d receivers; %v dropped by the node and filled from history, %v replayed",
		len(sent), receivers, overflow, p.metric(t, "im_replayed_messages_total"))
}

// TestOverflowUnkeptTold: without history, what a node drops under
// overload cannot be filled, so every receiver that missed a message is
// told: a recovered frame lists its personal stream as recovered:false
// with no position. No gap is silent.
func TestOverflowUnkeptTold(t *testing.T) {
	c := startProcCluster(t)
	p := c.startProc("u1", "-subscriber-queue", "1")
	c.waitProcViews(p)
	im := procHelper(t, c, &imhelper.HistoryOptions{Clients: []imhelper.HistoryRule{{Size: 0}}}, "u1")
	const receivers, senders, maxSends = 4, 16, 40000
	ids := make([]string, receivers)
	clients := make([]*wsClient, receivers)
	for i := range clients {
		ids[i] = fmt.Sprintf("uk-%d", i)
		clients[i] = c.connect(ids[i], "")
	}
	// Each reader counts messages, end markers and loss notices until the
	// test has seen what it waits for (the notice comes with the sweep
	// after the drop, which may be after the end marker).
	type result struct {
		got, ends int
		told      bool
		err       error
	}
	var mu sync.Mutex
	results := make([]result, receivers)
	stop := make(chan struct{})
	var readers sync.WaitGroup
	defer func() { close(stop); readers.Wait() }()
	for i, w := range clients {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				var f frame
				select {
				case f = <-w.frames:
				case <-w.done:
					mu.Lock()
					results[i].err = fmt.Errorf("%s closed", w.id)
					mu.Unlock()
					return
				case <-stop:
					return
				}
				mu.Lock()
				r := &results[i]
				switch {
				case f.Type == "recovered" && !f.First:
					for _, s := range f.Streams {
						if s.Channel != "" || s.Recovered || s.Epoch != "" {
							r.err = fmt.Errorf("%s: unexpected stream state %+v", w.id, s)
						}
					}
					r.told = true
				case f.Type == "message" && strings.Contains(string(f.Data), "end"):
					r.ends++
				case f.Type == "message":
					r.got++
				}
				mu.Unlock()
			}
		}()
	}
	sent := len(sendUntilOverflow(t, p, im, ids, senders, maxSends))
	// Every reader ends with an end marker (sent again while one can be
	// dropped too) and, if it missed messages, the notice.
	checkFor(t, time.Minute, func() error {
		mu.Lock()
		defer mu.Unlock()
		for i, r := range results {
			switch {
			case r.err != nil:
				t.Fatal(r.err)
			case r.ends == 0:
				go im.SendMessage(bg, "s", ids[i:i+1], `{"end":true}`)
				return fmt.Errorf("%s: no end marker yet", ids[i])
			case r.got < sent && !r.told:
				return fmt.Errorf("%s got %d of about %d messages and was not told recovered:false", ids[i], r.got, sent)
			}
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for i, r := range results {
		t.Logf("%s: %d of about %d messages, told of the loss: %v", ids[i], r.got, sent, r.told)
	}
}

// sendUntilOverflow sends numbered messages to every receiver at once (one
// PUBLISH for the node) from many goroutines until node p has dropped
// messages from its subscription, and returns the numbers sent. It fails
// the test if the node never dropped one.
func sendUntilOverflow(t *testing.T, p *nodeProc, im *imhelper.Client, ids []string, senders, maxSends int) map[int]bool {
	t.Helper()
	var next atomic.Int64
	var sendErr atomic.Value
	var sentMu sync.Mutex
	sent := make(map[int]bool)
	var wg sync.WaitGroup
	for range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1))
				if k > maxSends || (k%500 == 0 && k > 2000 && p.metric(t, "im_pubsub_overflow_total") > 0) {
					return
				}
				if _, err := im.SendMessage(bg, "s", ids, fmt.Sprintf(`{"k":%d}`, k)); err != nil {
					sendErr.Store(err)
					return
				}
				sentMu.Lock()
				sent[k] = true
				sentMu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err, _ := sendErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	if p.metric(t, "im_pubsub_overflow_total") == 0 {
		t.Fatalf("the node never overflowed in %d sends; the test did not exercise the drop", len(sent))
	}
	return sent
}

// The fault tests below run real node processes under traffic and count
// every message: each client must get every message sent to it and to its
// room exactly once, in offset order per stream, and never be told
// recovered:false (the windows are large enough to hold every fault).

// deliveryHistory keeps every stream long enough for the faults below.
var deliveryHistory = &imhelper.HistoryOptions{
	Clients:  []imhelper.HistoryRule{{Size: 10000, TTL: 5 * time.Minute}},
	Channels: []imhelper.HistoryRule{{Prefix: "room", Size: 10000, TTL: 5 * time.Minute}},
}

// procHelper is an imhelper with opts on c's Redis, once it sees nodes.
func procHelper(t testing.TB, c *cluster, opts *imhelper.HistoryOptions, nodes ...string) *imhelper.Client {
	t.Helper()
	im, err := imhelper.New(bg, c.helperOptions(imhelper.Options{RefreshInterval: 100 * time.Millisecond,
		Logger: quietLogger(), History: opts}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(im.Close)
	checkFor(t, 10*time.Second, func() error {
		if got := fmt.Sprint(im.Nodes()); got != fmt.Sprint(nodes) {
			return fmt.Errorf("imhelper sees %s, want %v", got, nodes)
		}
		return nil
	})
	return im
}

// resumer is a client that does what imclient.js does: it keeps the
// position of each stream it reads and, whenever its socket closes, asks
// the business side for a fresh URL and resumes with those positions. It
// checks each frame as it arrives.
type resumer struct {
	id   string
	im   *imhelper.Client
	stop chan struct{}
	done chan struct{}
	// lossTold: being told recovered:false is no failure (a fault that
	// may lose what Redis held); it is counted in unrecovered.
	lossTold atomic.Bool

	mu          sync.Mutex
	unrecovered int
	told        map[string]bool          // streams told recovered:false
	left        map[string]string        // stream → an epoch a recovered frame moved it off
	pos         map[string]wire.Position // stream ("" personal, else channel) → last position
	got         map[string]int           // "<stream>/<k>" → copies received
	ended       map[string]bool          // streams whose end marker arrived
	err         error
	closes      []websocket.StatusCode
	urls        []string // every URL it connected with, oldest first
	latency     []time.Duration
	recvAt      []time.Time // parallel to latency
	attachAt    []time.Time // when each socket got its first frame
}

func startResumer(t testing.TB, im *imhelper.Client, id string) *resumer {
	r := &resumer{id: id, im: im, stop: make(chan struct{}), done: make(chan struct{}),
		pos: map[string]wire.Position{}, got: map[string]int{}, ended: map[string]bool{}}
	attached := make(chan error, 1)
	go r.run(attached)
	t.Cleanup(r.halt)
	if err := <-attached; err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *resumer) halt() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
}

func (r *resumer) fail(err error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
}

func (r *resumer) stopped() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}

// run connects, reads until the socket closes and reconnects, until stop.
func (r *resumer) run(attached chan<- error) {
	defer close(r.done)
	for first := true; ; first = false {
		w, err := r.dial()
		for tries := 0; err != nil && !r.stopped(); tries++ {
			// Until imhelper stops routing to a dead node, its URL fails.
			if tries == 600 {
				break
			}
			time.Sleep(50 * time.Millisecond)
			w, err = r.dial()
		}
		if first {
			attached <- err
		}
		if err != nil {
			if !r.stopped() {
				r.fail(fmt.Errorf("%s: reconnect: %w", r.id, err))
			}
			return
		}
		r.read(w)
		if r.stopped() {
			w.conn.CloseNow()
			return
		}
	}
}

// dial asks for a URL, adds the positions and waits for the first frame.
func (r *resumer) dial() (*wsClient, error) {
	u, err := r.im.PrevConnectServer(bg, r.id, "")
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	for ch, p := range r.pos {
		if ch == "" {
			u += "&pos=" + url.QueryEscape(p.String())
		} else {
			u += "&pos=" + url.QueryEscape(p.String()+"."+ch)
		}
	}
	r.mu.Unlock()
	w, err := dialWS(u)
	if err != nil {
		return nil, err
	}
	w.id = r.id
	if err := w.waitAttached(); err != nil {
		w.conn.CloseNow()
		return nil, err
	}
	r.mu.Lock()
	r.urls = append(r.urls, u)
	r.attachAt = append(r.attachAt, time.Now())
	r.mu.Unlock()
	// Replays came before the first frame (they wait in w.frames); the
	// first frame itself reports each stream.
	r.onRecovered(w.first)
	return w, nil
}

// read handles w's frames until it closes or the resumer stops.
func (r *resumer) read(w *wsClient) {
	for {
		select {
		case f := <-w.frames:
			r.onFrame(f)
			continue
		case <-r.stop:
			return
		case <-w.done:
		}
		for { // what arrived before the close
			select {
			case f := <-w.frames:
				r.onFrame(f)
				continue
			default:
			}
			break
		}
		r.mu.Lock()
		r.closes = append(r.closes, websocket.CloseStatus(w.readErr()))
		r.mu.Unlock()
		return
	}
}

func (r *resumer) onRecovered(f frame) {
	for _, s := range f.Streams {
		if s.Recovered {
			continue
		}
		if !r.lossTold.Load() {
			r.fail(fmt.Errorf("%s told recovered:false: %+v", r.id, f))
			continue
		}
		// Told that the stream lost what it held (or could not be read).
		// Moved to a new epoch: the stream goes on from the told position,
		// and a late frame of the epoch left is one of the lost history,
		// written as it is (protocol.md §17.6). Otherwise, as imclient.js
		// does, take the next frame's position as given.
		r.mu.Lock()
		r.unrecovered++
		if r.told == nil {
			r.told, r.left = map[string]bool{}, map[string]string{}
		}
		r.told[s.Channel] = true
		if cur, ok := r.pos[s.Channel]; ok && s.Epoch != "" && s.Epoch != cur.Epoch {
			r.left[s.Channel] = cur.Epoch
			r.pos[s.Channel] = wire.Position{Epoch: s.Epoch, Offset: s.Offset}
		} else {
			delete(r.pos, s.Channel)
		}
		r.mu.Unlock()
	}
}

func (r *resumer) onFrame(f frame) {
	var stream string
	switch f.Type {
	case "recovered":
		r.onRecovered(f)
		return
	case "message":
	case "channel":
		stream = f.Channel
	default:
		r.fail(fmt.Errorf("%s got %+v", r.id, f))
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if f.Epoch == "" {
		r.fail0(fmt.Errorf("%s: a frame without a position: %+v", r.id, f))
		return
	}
	cur, ok := r.pos[stream]
	switch {
	case ok && cur.Epoch != f.Epoch && f.Epoch == r.left[stream]:
		// of the lost history: the position stays
	case ok && (cur.Epoch != f.Epoch || f.Offset != cur.Offset+1):
		r.fail0(fmt.Errorf("%s stream %q: %s.%d after %s", r.id, stream, f.Epoch, f.Offset, cur))
		return
	default:
		r.pos[stream] = wire.Position{Epoch: f.Epoch, Offset: f.Offset}
	}
	var body struct {
		K   int  `json:"k"`
		End bool `json:"end"`
	}
	if err := json.Unmarshal(f.Data, &body); err != nil {
		r.fail0(err)
		return
	}
	if body.End {
		r.ended[stream] = true
		return
	}
	r.got[fmt.Sprintf("%s/%d", stream, body.K)]++
	now := time.Now()
	r.latency = append(r.latency, now.Sub(time.UnixMilli(f.TS)))
	r.recvAt = append(r.recvAt, now)
}

// fail0 is fail with mu held.
func (r *resumer) fail0(err error) {
	if r.err == nil {
		r.err = err
	}
}

// traffic sends to every client of ids (one send to all) and to room, in
// turn, until stopped; it records what was accepted (the send returned
// without error).
type traffic struct {
	stop     chan struct{}
	done     chan struct{}
	personal []int
	channel  []int
	// maybe are the sends made while faulting, accepted or not: each may
	// or may not reach its clients (an error can come after the publish;
	// a master can die before its replica has what it acknowledged), so
	// each arrives at most once ("<stream>/<k>" → the call returned
	// without error).
	maybe   map[string]bool
	err     error
	sent    atomic.Int64 // rounds sent so far
	refused atomic.Int64 // sends refused with ErrNoNodes, or failed while faulting
	// faulting is set while a fault may make Redis refuse or lose sends (a
	// master killed, not yet replaced): the sends that overlap it go to
	// maybe. Set it with setFaulting, which counts its changes in edges, so
	// that a send in flight when the fault began (or one spanning the whole
	// fault) is one of them too.
	faulting atomic.Bool
	edges    atomic.Int64
}

// waitRounds waits until n more rounds were sent.
func (tr *traffic) waitRounds(t testing.TB, n int64) {
	t.Helper()
	target := tr.sent.Load() + n
	checkFor(t, 60*time.Second, func() error {
		select {
		case <-tr.done:
			return nil // finish reports the error
		default:
		}
		if k := tr.sent.Load(); k < target {
			return fmt.Errorf("%d of %d rounds sent", k, target)
		}
		return nil
	})
}

func newTraffic() *traffic { return &traffic{stop: make(chan struct{}), done: make(chan struct{})} }

// startTraffic sends a round every interval until finish.
func startTraffic(im *imhelper.Client, ids []string, room string, every time.Duration) *traffic {
	tr := newTraffic()
	go func() {
		defer close(tr.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for k := 1; ; k++ {
			select {
			case <-tr.stop:
				return
			case <-tick.C:
			}
			if !tr.round(im, ids, room, k) {
				return
			}
		}
	}()
	return tr
}

// round sends message k to every client of ids (one send to all) and to
// room; it reports false after an error that fails the test.
func (tr *traffic) round(im *imhelper.Client, ids []string, room string, k int) bool {
	data := fmt.Sprintf(`{"k":%d}`, k)
	for _, s := range []struct {
		call, stream string
		sent         *[]int
		send         func() error
	}{
		{"SendMessage", "", &tr.personal, func() error { _, err := im.SendMessage(bg, "s", ids, data); return err }},
		{"SendChanMessage", room, &tr.channel, func() error { _, err := im.SendChanMessage(bg, "s", room, data); return err }},
	} {
		edges, faulting := tr.edges.Load(), tr.faulting.Load() // as the call starts
		err := s.send()
		if faulting || tr.edges.Load() != edges {
			tr.maybeSent(s.stream+"/"+strconv.Itoa(k), err == nil)
			if err != nil {
				tr.refused.Add(1)
			}
		} else if !tr.accepted(err, s.sent, s.call, k) {
			return false
		}
	}
	tr.sent.Add(1)
	return true
}

// accepted records send k's outcome. A send refused because no node
// listens at that moment (the only node's subscription is being
// re-established) was not accepted: it is not counted. Any other error
// fails the test (accepted reports false).
func (tr *traffic) accepted(err error, sent *[]int, call string, k int) bool {
	switch {
	case err == nil:
		*sent = append(*sent, k)
	case errors.Is(err, imhelper.ErrNoNodes):
		tr.refused.Add(1)
	default:
		tr.err = fmt.Errorf("%s %d: %w", call, k, err)
		return false
	}
	return true
}

// setFaulting starts or ends the fault window of the sends.
func (tr *traffic) setFaulting(on bool) {
	tr.faulting.Store(on)
	tr.edges.Add(1)
}

func (tr *traffic) maybeSent(key string, accepted bool) {
	if tr.maybe == nil {
		tr.maybe = map[string]bool{}
	}
	tr.maybe[key] = accepted
}

// waitGot waits until every resumer has every message tr sent so far
// (call it only while no traffic goroutine runs).
func (tr *traffic) waitGot(t testing.TB, rs []*resumer, room string) {
	t.Helper()
	checkFor(t, 30*time.Second, func() error {
		for _, r := range rs {
			r.mu.Lock()
			missing := 0
			for _, k := range tr.personal {
				missing += min(1, 1-r.got[fmt.Sprintf("/%d", k)])
			}
			for _, k := range tr.channel {
				missing += min(1, 1-r.got[fmt.Sprintf("%s/%d", room, k)])
			}
			err := r.err
			r.mu.Unlock()
			if err != nil {
				return nil // finish reports it
			}
			if missing > 0 {
				return fmt.Errorf("%s misses %d messages", r.id, missing)
			}
		}
		return nil
	})
}

// finish stops the traffic, sends each stream its end marker, waits until
// every resumer has read both and checks that each got every accepted
// message exactly once.
func (tr *traffic) finish(t testing.TB, im *imhelper.Client, rs []*resumer, room string) {
	t.Helper()
	close(tr.stop)
	<-tr.done
	if tr.err != nil {
		t.Fatal(tr.err)
	}
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.id
	}
	if _, err := im.SendMessage(bg, "s", ids, `{"end":true}`); err != nil {
		t.Fatal(err)
	}
	if _, err := im.SendChanMessage(bg, "s", room, `{"end":true}`); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 60*time.Second, func() error {
		for _, r := range rs {
			r.mu.Lock()
			err, ended := r.err, r.ended[""] && r.ended[room]
			r.mu.Unlock()
			if err != nil {
				return nil // reported below
			}
			if !ended {
				return fmt.Errorf("%s has not read both end markers", r.id)
			}
		}
		return nil
	})
	for _, r := range rs {
		r.mu.Lock()
		if r.err != nil {
			r.mu.Unlock()
			t.Fatal(r.err)
		}
		for _, want := range []struct {
			stream string
			ks     []int
		}{{"", tr.personal}, {room, tr.channel}} {
			for _, k := range want.ks {
				if n := r.got[fmt.Sprintf("%s/%d", want.stream, k)]; n != 1 {
					r.mu.Unlock()
					t.Fatalf("%s got message %d of stream %q %d times", r.id, k, want.stream, n)
				}
			}
		}
		extra := 0
		for key := range tr.maybe {
			switch n := r.got[key]; {
			case n > 1:
				r.mu.Unlock()
				t.Fatalf("%s got message %s, whose send failed, %d times", r.id, key, n)
			case n == 1:
				extra++
			}
		}
		if n := len(tr.personal) + len(tr.channel); len(r.got) != n+extra {
			r.mu.Unlock()
			t.Fatalf("%s got %d distinct messages, %d were sent (and %d of the failed sends arrived)", r.id, len(r.got), n, extra)
		}
		r.mu.Unlock()
	}
	t.Logf("%d personal and %d room messages to each of %d clients, all delivered once, in order (%d sends refused with ErrNoNodes)",
		len(tr.personal), len(tr.channel), len(rs), tr.refused.Load())
}

// latencies returns, sorted, how long each message the resumers received
// between from and to took from its send.
func latencies(rs []*resumer, from, to time.Time) []time.Duration {
	var out []time.Duration
	for _, r := range rs {
		r.mu.Lock()
		for i, at := range r.recvAt {
			if !at.Before(from) && !at.After(to) {
				out = append(out, r.latency[i])
			}
		}
		r.mu.Unlock()
	}
	slices.Sort(out)
	return out
}

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(q*float64(len(d))))]
}

// startResumers connects n resumers with ids prefix-0…, puts them all in
// room and returns them.
func startResumers(t testing.TB, im *imhelper.Client, prefix string, n int, room string) ([]*resumer, []string) {
	t.Helper()
	rs := make([]*resumer, n)
	ids := make([]string, n)
	for i := range rs {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		rs[i] = startResumer(t, im, ids[i])
	}
	if err := im.JoinChanClients(bg, room, ids...); err != nil {
		t.Fatal(err)
	}
	return rs, ids
}

// lastURL is the URL r connected with last.
func (r *resumer) lastURL() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.urls[len(r.urls)-1]
}

func (r *resumer) reconnects() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.urls) - 1
}

// graceEnds sums im_offline_grace_total{end} over procs.
func graceEnds(t testing.TB, end string, procs ...*nodeProc) float64 {
	sum := 0.0
	for _, p := range procs {
		sum += p.metric(t, `im_offline_grace_total{end="`+end+`"}`)
	}
	return sum
}

// keptEverything asserts that every client is still online and in room,
// and that events (consumed from the start) hold one online event per
// client and no offline event.
func keptEverything(t testing.TB, im *imhelper.Client, events *eventLog, ids []string, room string) {
	t.Helper()
	checkFor(t, 10*time.Second, func() error {
		if k := events.count("online", ""); k != len(ids) {
			return fmt.Errorf("%d online events, want one per client (%d)", k, len(ids))
		}
		return nil
	})
	if k := events.count("offline", ""); k != 0 {
		t.Errorf("%d offline events: a client that came back within the grace was reported offline", k)
	}
	if k, _ := im.OnlineCount(bg); k != int64(len(ids)) {
		t.Errorf("%d online, want %d", k, len(ids))
	}
	if members, _ := im.GetChanClientList(bg, room); len(members) != len(ids) {
		t.Errorf("%s has %d members, want %d: clients were taken out of their room", room, len(members), len(ids))
	}
}

// faultRun is a fault test's cluster: node processes, an imhelper that
// keeps every stream (deliveryHistory), an event log read from the start,
// n resumers in "room" and traffic to them every 20 ms, already flowing.
type faultRun struct {
	c      *cluster
	procs  []*nodeProc
	im     *imhelper.Client
	events *eventLog
	rs     []*resumer
	ids    []string
	tr     *traffic
}

func startFaultRun(t *testing.T, nodes []string, flags []string, n int) *faultRun {
	t.Helper()
	f := &faultRun{c: startProcCluster(t)}
	for _, id := range nodes {
		f.procs = append(f.procs, f.c.startProc(id, flags...))
	}
	f.c.waitProcViews(f.procs...)
	f.im = procHelper(t, f.c, deliveryHistory, nodes...)
	f.events = f.c.consume("faults")
	f.rs, f.ids = startResumers(t, f.im, nodes[0], n, "room")
	f.tr = startTraffic(f.im, f.ids, "room", 20*time.Millisecond)
	f.tr.waitRounds(t, 20)
	return f
}

// waitAll waits until on holds for each of rs (what it says of one that
// does not yet).
func waitAll(t testing.TB, rs []*resumer, on func(*resumer) bool, what string) {
	t.Helper()
	checkFor(t, 60*time.Second, func() error {
		for _, r := range rs {
			if !on(r) {
				return fmt.Errorf("%s %s", r.id, what)
			}
		}
		return nil
	})
}

// onNode reports that r's last socket is on p.
func onNode(p *nodeProc) func(*resumer) bool {
	return func(r *resumer) bool { return strings.HasPrefix(r.lastURL(), p.url) }
}

// A node joins under traffic: the clients whose owner changed are moved
// (4002) and resume on the new node. Every message reaches every client
// once, in order; every moved client stays in its room and produces no
// offline or online event. The added latency of moved clients is logged
// (the target is p99 ≤ 1 s; docs/benchmarks.md).
func TestDeliveryNodeJoins(t *testing.T) {
	flags := []string{"-move-window", "2s", "-offline-grace", "10s"}
	f := startFaultRun(t, []string{"dj1", "dj2"}, flags, 300)
	moveStart := time.Now()
	j3 := f.c.startProc("dj3", flags...)
	checkFor(t, 10*time.Second, func() error {
		if got := fmt.Sprint(f.im.Nodes()); got != "[dj1 dj2 dj3]" {
			return fmt.Errorf("imhelper sees %s", got)
		}
		return nil
	})
	var moved []*resumer
	for _, r := range f.rs {
		if f.im.Owner(r.id) == "dj3" {
			moved = append(moved, r)
		}
	}
	if len(moved) < len(f.rs)/5 {
		t.Fatalf("%d of %d clients moved; want about a third", len(moved), len(f.rs))
	}
	waitAll(t, moved, onNode(j3), "not yet on dj3")
	allMoved := time.Now()
	f.tr.waitRounds(t, 20)
	f.tr.finish(t, f.im, f.rs, "room")
	for _, r := range f.rs {
		if !slices.Contains(moved, r) && r.reconnects() != 0 {
			t.Errorf("%s reconnected %d times but its owner did not change", r.id, r.reconnects())
		}
	}
	// The old owners end each moved client's grace without an event.
	checkFor(t, 30*time.Second, func() error {
		if k := graceEnds(t, "expired", f.procs...) + graceEnds(t, "back", f.procs...); k < float64(len(moved)) {
			return fmt.Errorf("%v of %d graces ended", k, len(moved))
		}
		return nil
	})
	keptEverything(t, f.im, f.events, f.ids, "room")
	d := latencies(moved, moveStart, allMoved)
	t.Logf("%d moved clients, all on dj3 %v after dj3 started; latency of the %d messages they got meanwhile: p50 %v, p99 %v, max %v",
		len(moved), allMoved.Sub(moveStart).Round(time.Millisecond), len(d), quantile(d, 0.5), quantile(d, 0.99), quantile(d, 1))
}

// A SIGTERM drain under traffic: the drained node's clients (1001) resume
// on the survivor with everything, stay in their room and produce no
// events.
func TestDeliveryDrain(t *testing.T) {
	f := startFaultRun(t, []string{"dd1", "dd2"}, []string{"-offline-grace", "10s", "-drain-timeout", "20s"}, 200)
	f.procs[0].signal(syscall.SIGTERM)
	f.procs[0].waitExit(t, 30*time.Second)
	waitAll(t, f.rs, onNode(f.procs[1]), "not yet on dd2")
	f.tr.waitRounds(t, 20)
	f.tr.finish(t, f.im, f.rs, "room")
	keptEverything(t, f.im, f.events, f.ids, "room")
}

// kill -9 of a node under traffic: its clients resume on the survivors
// once imhelper stops routing to it, with everything sent meanwhile; the
// reap waits the grace, so they stay in their room and produce no events.
func TestDeliveryNodeKilled(t *testing.T) {
	f := startFaultRun(t, []string{"dk1", "dk2", "dk3"}, []string{"-offline-grace", "10s", "-lease-ttl", "2s"}, 150)
	dead := f.procs[1]
	var victims []*resumer
	for _, r := range f.rs {
		if onNode(dead)(r) {
			victims = append(victims, r)
		}
	}
	if len(victims) == 0 {
		t.Fatal("no client on dk2")
	}
	if err := dead.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitAll(t, victims, func(r *resumer) bool { return !onNode(dead)(r) }, "not yet on a survivor")
	f.tr.waitRounds(t, 20)
	f.tr.finish(t, f.im, f.rs, "room")
	// The survivor that reaps dk2 does so after the grace: by then every
	// victim is online elsewhere.
	checkFor(t, 30*time.Second, func() error {
		if listed(f.c, "dk2") {
			return fmt.Errorf("dk2 not reaped yet")
		}
		return nil
	})
	keptEverything(t, f.im, f.events, f.ids, "room")
	t.Logf("%d clients of the killed node resumed on the survivors", len(victims))
}

// CLIENT KILL TYPE pubsub, then a burst and nothing after it: what was
// published while the node was unsubscribed reaches every socket although
// no later message shows the gap (the node fills every socket after its
// resubscribe). No socket is closed, nothing is lost.
func TestDeliveryPubsubKilled(t *testing.T) {
	c := startProcCluster(t)
	p := c.startProc("dp1")
	c.waitProcViews(p)
	im := procHelper(t, c, deliveryHistory, "dp1")
	rs, ids := startResumers(t, im, "dp", 100, "room")
	tr := newTraffic()
	close(tr.done) // no goroutine: the rounds are sent below
	k := 0
	for range 5 {
		sweeps := p.metric(t, `im_stream_sweeps_total{why="resubscribe"}`)
		if _, err := c.redis.Exec("CLIENT", "KILL", "TYPE", "pubsub"); err != nil {
			t.Fatal(err)
		}
		for range 20 {
			k++
			if !tr.round(im, ids, "room", k) {
				t.Fatal(tr.err)
			}
		}
		checkFor(t, 30*time.Second, func() error {
			if k := p.metric(t, `im_stream_sweeps_total{why="resubscribe"}`); k <= sweeps {
				return fmt.Errorf("no sweep after the kill yet")
			}
			return nil
		})
		tr.waitGot(t, rs, "room")
	}
	tr.finish(t, im, rs, "room")
	for _, r := range rs {
		if k := r.reconnects(); k != 0 {
			t.Errorf("%s reconnected %d times: a pub/sub kill closed sockets", r.id, k)
		}
	}
}
