package imserver_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestConnectRacesJoinChan: clients connect while JoinChan adds them to a
// room, each pair at once, over real sockets on two nodes. Whichever comes
// first, every client ends a member on its node (a channel message reaches
// it) and came online once.
func TestConnectRacesJoinChan(t *testing.T) {
	c := startCluster(t, 2, nil)
	events := c.consume("race-join")
	const n = 40
	clients := make([]*wsClient, n)
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		id := fmt.Sprintf("rj-%d", i)
		wg.Add(2)
		go func() {
			defer wg.Done()
			w, err := c.tryConnect(id, "")
			if err != nil {
				errs <- err
				return
			}
			clients[i] = w
		}()
		go func() {
			defer wg.Done()
			if err := c.helper.JoinChan(bg, id, "rj-room"); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Every join notice sent so far has been handled once the barrier,
	// sent after it on the same node channels, arrives.
	c.barrier(clients...)
	owners := map[string]bool{}
	for _, w := range clients {
		owners[c.helper.Owner(w.id)] = true
	}
	waitSubscribers(t, c, "rj-room", len(owners))
	if _, err := c.helper.SendChanMessage(bg, "x", "rj-room", `"all"`); err != nil {
		t.Fatal(err)
	}
	for _, w := range clients {
		if f := w.nextData(t); f.Type != "channel" || string(f.Data) != `"all"` {
			t.Fatalf("%s got %+v: its join was lost", w.id, f)
		}
	}
	checkFor(t, 10*time.Second, func() error {
		if got := events.count("online", ""); got != n {
			return fmt.Errorf("%d online events, want %d", got, n)
		}
		return nil
	})
	seen := map[string]int{}
	events.mu.Lock()
	for _, e := range events.events {
		seen[e.Type+" "+e.Client]++
	}
	events.mu.Unlock()
	for _, w := range clients {
		if seen["online "+w.id] != 1 || seen["offline "+w.id] != 0 {
			t.Errorf("%s: %d online, %d offline events", w.id, seen["online "+w.id], seen["offline "+w.id])
		}
	}
}

// TestConnectCloseRaces: two sockets of one client open and close at
// once, and one opens while the other closes, round after round. Presence
// ends right (offline, every socket closed) and the events alternate,
// online first: one online per 0 -> 1 of the node, one offline per 1 -> 0,
// none lost, none twice.
func TestConnectCloseRaces(t *testing.T) {
	c := startCluster(t, 1, nil)
	events := c.consume("race-close")
	node := c.nodes[0]
	const id, rounds = "flap", 12
	closeNow := func(w *wsClient) { _ = w.conn.Close(websocket.StatusNormalClosure, "") }
	both := func(f, g func()) {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); f() }()
		go func() { defer wg.Done(); g() }()
		wg.Wait()
	}
	for r := range rounds {
		var a, b *wsClient
		var errA, errB error
		if r%2 == 0 { // open two at once, close both at once
			both(func() { a, errA = c.tryConnect(id, "") }, func() { b, errB = c.tryConnect(id, "") })
			if errA != nil || errB != nil {
				t.Fatal(errA, errB)
			}
			both(func() { closeNow(a) }, func() { closeNow(b) })
		} else { // one opens while the other closes
			a = c.connect(id, "")
			both(func() { closeNow(a) }, func() { b, errB = c.tryConnect(id, "") })
			if errB != nil {
				t.Fatal(errB)
			}
			closeNow(b)
		}
		checkFor(t, 10*time.Second, func() error {
			if n := node.Connections(); n != 0 {
				return fmt.Errorf("round %d: %d sockets", r, n)
			}
			if on, err := c.helper.HasOnline(bg, id); err != nil || on {
				return fmt.Errorf("round %d: online %v %v", r, on, err)
			}
			return nil
		})
	}
	// Each event was appended with its transition; wait until the
	// consumer has read the whole stream.
	var seq []string
	checkFor(t, 10*time.Second, func() error {
		n, err := c.st.EventStreamLen(bg)
		if err != nil {
			return err
		}
		events.mu.Lock()
		defer events.mu.Unlock()
		if got := len(events.events); int64(got) != n {
			return fmt.Errorf("read %d of %d events", got, n)
		}
		for _, e := range events.events {
			if e.Client == id {
				seq = append(seq, e.Type)
			}
		}
		return nil
	})
	for i, typ := range seq {
		if want := []string{"online", "offline"}[i%2]; typ != want {
			t.Fatalf("event %d is %s, want %s: %s", i, typ, want, strings.Join(seq, " "))
		}
	}
	if len(seq) < 2*rounds {
		t.Fatalf("%d events for %d rounds: %s", len(seq), rounds, strings.Join(seq, " "))
	}
}
