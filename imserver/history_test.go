package imserver_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/wire"
)

// historyHelper is a second imhelper on c's Redis with the given history
// rules (nil: the defaults).
func historyHelper(t testing.TB, c *cluster, h *imhelper.HistoryOptions) *imhelper.Client {
	t.Helper()
	im, err := imhelper.New(context.Background(), c.helperOptions(imhelper.Options{RefreshInterval: 100 * time.Millisecond,
		Logger: quietLogger(), History: h}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(im.Close)
	checkFor(t, 10*time.Second, func() error {
		if got, want := len(im.Nodes()), len(c.nodes); got != want {
			return fmt.Errorf("helper sees %d nodes, want %d", got, want)
		}
		return nil
	})
	return im
}

// connectAt connects id through im, presenting positions (the "pos"
// parameters a resuming browser adds), and waits for its first frame.
func connectAt(t testing.TB, im *imhelper.Client, id string, pos ...string) (*wsClient, error) {
	u, err := im.PrevConnectServer(context.Background(), id, "")
	if err != nil {
		return nil, err
	}
	for _, p := range pos {
		u += "&pos=" + url.QueryEscape(p)
	}
	wc, err := dialWS(u)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", id, err)
	}
	wc.id = id
	t.Cleanup(func() { wc.conn.CloseNow() })
	if err := wc.waitAttached(); err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	return wc, nil
}

// framesUntil returns the frames w receives before the first one done
// accepts (a marker sent last).
func (w *wsClient) framesUntil(t testing.TB, done func(frame) bool) []frame {
	t.Helper()
	var out []frame
	for {
		f := w.next(t)
		if done(f) {
			return out
		}
		out = append(out, f)
	}
}

// The connect gap: a message sent after PrevConnectServer issued the URL
// and before the socket opened is delivered on connect, exactly once, ahead
// of the first recovered frame, in 1,000 of 1,000 trials.
func TestConnectGapDelivered(t *testing.T) {
	c := startCluster(t, 3, nil)
	const trials = 1000
	var wg sync.WaitGroup
	errs := make(chan error, trials)
	sem := make(chan struct{}, 8)
	for i := 0; i < trials; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			// A trial whose calls failed (a loaded box: Redis slow to
			// answer) accepted nothing; it runs again with a new id. A
			// lost or repeated message fails the test.
			for attempt := 0; ; attempt++ {
				err := connectGapTrial(c, fmt.Sprintf("cg-%d-%d", i, attempt))
				var se setupError
				if errors.As(err, &se) && attempt < 3 {
					continue
				}
				errs <- err
				return
			}
		}()
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
			if failed <= 5 {
				t.Error(err)
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d trials lost or duplicated the message", failed, trials)
	}
}

// setupError is a trial that failed before it had a message accepted.
type setupError struct{ error }

func connectGapTrial(c *cluster, id string) error {
	ctx := context.Background()
	u, err := c.helper.PrevConnectServer(ctx, id, "")
	if err != nil {
		return setupError{err}
	}
	sent, err := c.helper.SendMessageResult(ctx, "gap", []string{id}, `"in the gap"`)
	if err != nil {
		return setupError{err}
	}
	wc, err := dialWS(u)
	if err != nil {
		return fmt.Errorf("%s: dial: %w", id, err)
	}
	defer wc.conn.Close(websocket.StatusNormalClosure, "")
	if err := wc.waitAttached(); err != nil {
		return err
	}
	p := sent.Positions[id]
	if st := wc.first.Streams; len(st) != 1 || !st[0].Recovered || st[0].Offset != p.Offset || st[0].Epoch != p.Epoch {
		return fmt.Errorf("%s: first frame %+v, want recovered at %v", id, wc.first, p)
	}
	// The replay came before the first frame; nothing after it.
	select {
	case f := <-wc.frames:
		if f.ID != sent.ID || f.Epoch != p.Epoch || f.Offset != p.Offset {
			return fmt.Errorf("%s: got %+v, want %s at %v", id, f, sent.ID, p)
		}
	default:
		return fmt.Errorf("%s: the message sent in the connect gap was not delivered", id)
	}
	if _, err := c.helper.SendMessage(ctx, "gap", []string{id}, `"marker"`); err != nil {
		return err
	}
	select {
	case f := <-wc.frames:
		if string(f.Data) != `"marker"` {
			return fmt.Errorf("%s: after the replay got %+v, want the marker (a duplicate?)", id, f)
		}
	case <-time.After(attachTimeout):
		return fmt.Errorf("%s: no marker", id)
	}
	return nil
}

// The join gap: a channel message sent the instant JoinChan returns
// reaches every member, on two other nodes, exactly once, in 1,000 of 1,000
// trials (a channel each).
func TestJoinGapDelivered(t *testing.T) {
	c := startCluster(t, 3, nil)
	im := historyHelper(t, c, &imhelper.HistoryOptions{Channels: []imhelper.HistoryRule{{Prefix: "jg-", Size: 10, TTL: time.Minute}}})
	// Two members, owned by two different nodes.
	var members []*wsClient
	owners := map[string]bool{}
	for i := 0; len(members) < 2; i++ {
		id := fmt.Sprintf("member-%d", i)
		if o := c.helper.Owner(id); !owners[o] {
			owners[o] = true
			members = append(members, c.connect(id, ""))
		}
	}
	const trials = 1000
	ctx := context.Background()
	for i := 0; i < trials; i++ {
		ch := "jg-" + strconv.Itoa(i)
		for _, m := range members {
			if err := im.JoinChan(ctx, m.id, ch); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := im.SendChanMessage(ctx, "joiner", ch, strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := im.SendMessage(ctx, "end", []string{members[0].id, members[1].id}, `"end"`); err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		got := map[string]int{}
		for _, f := range m.framesUntil(t, func(f frame) bool { return f.From == "end" }) {
			if f.Type == "channel" {
				got[f.Channel]++
			}
		}
		lost, dup := 0, 0
		for i := 0; i < trials; i++ {
			switch got["jg-"+strconv.Itoa(i)] {
			case 0:
				lost++
			case 1:
			default:
				dup++
			}
		}
		if lost+dup > 0 {
			t.Errorf("%s: %d of %d channel messages lost, %d duplicated", m.id, lost, trials, dup)
		}
	}
}

// Inside the window a resuming client is replayed exactly what it missed,
// in order; outside it (more missed than the window keeps, away longer
// than the TTL, Redis lost the history) it is told recovered:false and
// nothing is replayed: never a silent gap.
func TestResumeWindow(t *testing.T) {
	c := startCluster(t, 1, nil)
	im := historyHelper(t, c, &imhelper.HistoryOptions{Clients: []imhelper.HistoryRule{{Size: 5, TTL: time.Minute}, {Prefix: "brief-", Size: 5, TTL: time.Second}}})
	ctx := context.Background()
	send := func(t *testing.T, to string, n int) []imhelper.Position {
		t.Helper()
		var out []imhelper.Position
		for i := 0; i < n; i++ {
			s, err := im.SendMessageResult(ctx, "s", []string{to}, strconv.Itoa(i))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, s.Positions[to])
		}
		return out
	}
	away := func(t *testing.T, id string) imhelper.Position {
		t.Helper()
		w, err := connectAt(t, im, id)
		if err != nil {
			t.Fatal(err)
		}
		p := send(t, id, 1)[0]
		if f := w.next(t); f.Offset != p.Offset {
			t.Fatalf("live frame %+v, want offset %d", f, p.Offset)
		}
		_ = w.conn.Close(websocket.StatusNormalClosure, "")
		return p
	}
	resume := func(t *testing.T, id string, last imhelper.Position) (*wsClient, []frame) {
		t.Helper()
		w, err := connectAt(t, im, id, last.String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := im.SendMessage(ctx, "marker", []string{id}, `"m"`); err != nil {
			t.Fatal(err)
		}
		// Replays came before the first frame; the marker is live.
		return w, w.framesUntil(t, func(f frame) bool { return f.From == "marker" })
	}

	t.Run("within", func(t *testing.T) {
		last := away(t, "w")
		missed := send(t, "w", 4)
		w, replayed := resume(t, "w", last)
		if len(w.first.Streams) != 1 || !w.first.Streams[0].Recovered || w.first.Streams[0].Offset != missed[3].Offset {
			t.Fatalf("first frame %+v", w.first)
		}
		if len(replayed) != 4 {
			t.Fatalf("replayed %d, want 4: %+v", len(replayed), replayed)
		}
		for i, f := range replayed {
			if f.Offset != missed[i].Offset || string(f.Data) != strconv.Itoa(i) {
				t.Fatalf("replay %d: %+v, want offset %d", i, f, missed[i].Offset)
			}
		}
	})
	t.Run("more than the window", func(t *testing.T) {
		last := away(t, "m")
		missed := send(t, "m", 6) // the window keeps 5
		w, replayed := resume(t, "m", last)
		if st := w.first.Streams; len(st) != 1 || st[0].Recovered || st[0].Offset != missed[5].Offset || len(replayed) != 0 {
			t.Fatalf("first frame %+v, replayed %d; want recovered:false at %d, nothing replayed", w.first, len(replayed), missed[5].Offset)
		}
	})
	t.Run("longer than the ttl", func(t *testing.T) {
		last := away(t, "brief-1")
		missed := send(t, "brief-1", 1)
		// The stream expires a TTL after its last append.
		checkFor(t, 30*time.Second, func() error {
			if out, _ := c.redis.Exec("EXISTS", "im:hist:{u:brief-1}"); strings.TrimSpace(out) != "0" {
				return fmt.Errorf("stream still there")
			}
			return nil
		})
		w, replayed := resume(t, "brief-1", last)
		if st := w.first.Streams; len(st) != 1 || st[0].Recovered || st[0].Offset != missed[0].Offset || len(replayed) != 0 {
			t.Fatalf("first frame %+v, replayed %+v; want recovered:false", w.first, replayed)
		}
	})
	t.Run("redis lost the history", func(t *testing.T) {
		last := away(t, "e")
		send(t, "e", 2)
		if _, err := c.redis.Exec("FLUSHALL"); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 30*time.Second, func() error { // the node re-registers
			if out, _ := c.redis.Exec("EXISTS", "im:node:node-1"); strings.TrimSpace(out) != "1" {
				return fmt.Errorf("node-1 not registered again")
			}
			if err := im.RefreshNodes(ctx); err != nil || len(im.Nodes()) != 1 {
				return fmt.Errorf("imhelper sees %v (%v)", im.Nodes(), err)
			}
			return nil
		})
		w, replayed := resume(t, "e", last)
		if st := w.first.Streams; len(st) != 1 || st[0].Recovered || st[0].Epoch == last.Epoch || len(replayed) != 0 {
			t.Fatalf("first frame %+v, replayed %+v; want recovered:false in a new epoch", w.first, replayed)
		}
	})
	t.Run("bad positions", func(t *testing.T) {
		for _, bad := range []string{"x", "a.01", "a.1.bad channel", "a.1&pos=b.2"} {
			u, err := im.PrevConnectServer(ctx, "bad", "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := dialWS(u + "&pos=" + url.QueryEscape(bad)); statusOf(err) != 400 {
				t.Errorf("pos=%q: %v, want HTTP 400", bad, err)
			}
		}
	})
}

// While the fleet changes, a direct message that reaches a node which does
// not hold the receiver (the new owner before the client arrives, or the
// old one, from a stale view) is forwarded to the node that does.
func TestForwardDuringMoves(t *testing.T) {
	c := startCluster(t, 2, nil) // the nodes just saw each other: forwarding is on
	var x *wsClient
	var other string
	for i := 0; x == nil; i++ {
		id := fmt.Sprintf("fx-%d", i)
		if c.helper.Owner(id) == "node-1" {
			x, other = c.connect(id, ""), "node-2"
		}
	}
	msg := wire.EncodeNodeMsg(wire.NodeMsg{Kind: wire.KindSend, To: []string{x.id}, ID: "fwd-1"},
		wire.MessageFrame("fwd-1", "s", nil, time.Now().UnixMilli(), []byte(`"forwarded"`)))
	if _, err := c.redis.Exec("PUBLISH", "im:n:"+other, string(msg)); err != nil {
		t.Fatal(err)
	}
	if f := x.next(t); f.ID != "fwd-1" || string(f.Data) != `"forwarded"` {
		t.Fatalf("got %+v", f)
	}
}
