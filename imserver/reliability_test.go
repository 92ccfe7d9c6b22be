package imserver_test

import (
	"context"
	"errors"
	"fmt"
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

// eventLog collects events from ConsumeEvents.
type eventLog struct {
	mu     sync.Mutex
	events []imhelper.Event
}

func (l *eventLog) add(_ context.Context, e imhelper.Event) error {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
	return nil
}

func (l *eventLog) count(typ, reason string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.events {
		if e.Type == typ && (reason == "" || e.Reason == reason) {
			n++
		}
	}
	return n
}

func (c *cluster) consume(group string) *eventLog {
	l := &eventLog{}
	ctx, cancel := context.WithCancel(context.Background())
	c.t.Cleanup(cancel)
	go c.helper.ConsumeEvents(ctx, group, "t", l.add, imhelper.ConsumeOptions{FromStart: true, Block: 200 * time.Millisecond})
	return l
}

// TestNodeKilled: kill -9 one of three node processes. A survivor emits an
// offline event (node_lost) for each of its clients within the lease TTL
// plus a margin, presence and channels forget them, and the clients
// reconnect to the survivors through fresh URLs.
func TestNodeKilled(t *testing.T) {
	c := startProcCluster(t)
	// A short lease, so that the dead node is noticed quickly.
	procs := []*nodeProc{c.startProc("p1", "-lease-ttl", "2s"), c.startProc("p2", "-lease-ttl", "2s"), c.startProc("p3", "-lease-ttl", "2s")}
	c.waitProcViews(procs...) // every node sees the others before clients arrive
	events := c.consume("ops")
	const n = 150
	clients := map[string]*wsClient{}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("k-%d", i)
		clients[id] = c.connect(id, "")
		if err := c.helper.JoinChan(bg, id, "hall"); err != nil {
			t.Fatal(err)
		}
	}
	checkFor(t, 5*time.Second, func() error {
		if k, _ := c.helper.OnlineCount(bg); k != n {
			return fmt.Errorf("%d online", k)
		}
		return nil
	})
	var victims []string
	for id := range clients {
		if c.helper.Owner(id) == "p2" {
			victims = append(victims, id)
		}
	}
	killedAt := time.Now()
	procs[1].cmd.Process.Kill()
	procs[1].waitExit(t, 5*time.Second)

	checkFor(t, 20*time.Second, func() error {
		if k := events.count("offline", wire.ReasonNodeLost); k != len(victims) {
			return fmt.Errorf("%d node_lost events, want %d", k, len(victims))
		}
		return nil
	})
	t.Logf("%d node_lost events %v after kill -9 (lease 2s)", len(victims), time.Since(killedAt).Round(10*time.Millisecond))
	for _, id := range victims {
		if ok, _ := c.helper.HasOnline(bg, id); ok {
			t.Fatalf("ghost: %s still online", id)
		}
	}
	if k, _ := c.helper.GetChanOnline(bg, "hall"); k != n-len(victims) {
		t.Errorf("hall online = %d, want %d", k, n-len(victims))
	}
	members, _ := c.helper.GetChanClientList(bg, "hall")
	if len(members) != n-len(victims) {
		t.Errorf("hall members = %d, want %d", len(members), n-len(victims))
	}
	// The orphans reconnect through fresh URLs, now owned by survivors.
	c.waitHelperNodes("p1", "p3")
	for _, id := range victims {
		<-clients[id].done
		w := c.connect(id, "")
		if !strings.HasPrefix(w.url, procs[0].url) && !strings.HasPrefix(w.url, procs[2].url) {
			t.Fatalf("%s reconnected to %s", id, w.url)
		}
		clients[id] = w
	}
	checkFor(t, 5*time.Second, func() error {
		if k, _ := c.helper.OnlineCount(bg); k != n {
			return fmt.Errorf("%d online after reconnect, want %d", k, n)
		}
		return nil
	})
	// Exactly one survivor reaped: one event per victim, not two. Once the
	// reap finished, the node left the registry's index, and no survivor
	// can start another reap of it.
	checkFor(t, 20*time.Second, func() error {
		if listed(c, "p2") {
			return errors.New("p2 still in the registry")
		}
		return nil
	})
	if k := events.count("offline", wire.ReasonNodeLost); k != len(victims) {
		t.Errorf("%d node_lost events after settling, want %d", k, len(victims))
	}
}

// TestRedisKilled: kill -9 redis-server while 3 nodes hold 3,000 clients
// and messages flow; restart it empty. Every node is ready again within a
// few seconds, no socket was dropped, presence is rebuilt, and every
// message sent after readiness returned is delivered.
func TestRedisKilled(t *testing.T) {
	if testing.Short() {
		t.Log("short mode: running with 300 clients")
	}
	c := startProcCluster(t)
	procs := []*nodeProc{c.startProc("r1"), c.startProc("r2"), c.startProc("r3")}
	c.waitProcViews(procs...)
	n := 3000
	if testing.Short() {
		n = 300
	}
	clients := make([]*wsClient, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			clients[i], errs[i] = c.tryConnect(fmt.Sprintf("rk-%d", i), "")
		}(i)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if err := c.helper.JoinChanClients(bg, "survivors", "rk-0", "rk-1", "rk-2", "rk-3"); err != nil {
		t.Fatal(err)
	}
	// Traffic while Redis dies: a sender that ignores errors.
	stop := make(chan struct{})
	var sent atomic.Int64
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.helper.SendMessage(bg, "pre", []string{fmt.Sprintf("rk-%d", i%n)}, `{"pre":true}`); err == nil {
				sent.Add(1)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	checkFor(t, 10*time.Second, func() error {
		if sent.Load() < 100 {
			return fmt.Errorf("%d messages sent before the kill", sent.Load())
		}
		return nil
	})
	c.redis.Kill()
	for _, p := range procs {
		checkFor(t, 15*time.Second, func() error {
			if code, _ := getJSON(t, p.admin+"/readyz"); code == 200 {
				return fmt.Errorf("%s still ready while Redis is down", p.id)
			}
			return nil
		})
	}
	c.redis.Restart()
	restarted := time.Now()
	for _, p := range procs {
		checkFor(t, 10*time.Second, func() error {
			if code, _ := getJSON(t, p.admin+"/readyz"); code != 200 {
				return fmt.Errorf("%s not ready", p.id)
			}
			return nil
		})
	}
	t.Logf("all nodes ready %v after Redis restarted", time.Since(restarted).Round(10*time.Millisecond))
	close(stop)
	c.waitHelperNodes("r1", "r2", "r3")
	for i, cl := range clients {
		select {
		case <-cl.done:
			t.Fatalf("client %d was dropped", i)
		default:
		}
	}
	checkFor(t, 10*time.Second, func() error {
		if k, _ := c.helper.OnlineCount(bg); k != int64(n) {
			return fmt.Errorf("presence rebuilt for %d of %d", k, n)
		}
		return nil
	})
	if cl, _ := c.helper.GetChanClientList(bg, "survivors"); len(cl) != 4 {
		t.Errorf("channel membership not rebuilt: %v", cl)
	}
	// Frames sent before and during the outage may still be arriving;
	// the rounds below skip them.
	// Every message after readiness is delivered: one to each client.
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("rk-%d", i)
	}
	// Each round keeps a copy for each of the 3,000 receivers while the
	// nodes fill every socket after their resubscribe: on a loaded box that
	// takes longer than the default call timeout, and the test is about
	// delivery, not latency.
	sendCtx, cancelSend := context.WithTimeout(bg, time.Minute)
	defer cancelSend()
	for i := 0; i < 3; i++ {
		if _, err := c.helper.SendMessage(sendCtx, "post", ids, fmt.Sprintf(`{"round":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	// Redis restarted empty, so each client's personal stream began a new
	// epoch: each is told recovered:false once (around the first message of
	// the new epoch, which it is replayed), never a silent gap, and never
	// twice for the one loss.
	for i, cl := range clients {
		lost := 0
		for r := 0; r < 3; r++ {
			f := cl.next(t)
			for f.From == "pre" || f.Type == "recovered" {
				if f.Type == "recovered" && len(f.Streams) == 1 && f.Streams[0].Channel == "" && !f.Streams[0].Recovered {
					lost++
				}
				f = cl.next(t)
			}
			if f.From != "post" || string(f.Data) != fmt.Sprintf(`{"round":%d}`, r) {
				t.Fatalf("client %d round %d got %+v", i, r, f)
			}
		}
		for lost == 0 {
			if f := cl.next(t); f.Type == "recovered" && !f.Streams[0].Recovered {
				lost++
			}
		}
		if lost != 1 {
			t.Fatalf("client %d was told recovered:false %d times for one restart", i, lost)
		}
	}
	if _, err := c.helper.SendChanMessage(bg, "post", "survivors", `1`); err != nil {
		t.Fatal(err)
	}
	for _, cl := range clients[:4] {
		if f := cl.next(t); f.Type != "channel" {
			t.Fatalf("%s got %+v after restart", cl.id, f)
		}
	}
	reconnects := 0.0
	for _, p := range procs {
		reconnects += p.metric(t, "im_redis_reconnects_total")
	}
	if reconnects < 3 {
		t.Errorf("im_redis_reconnects_total summed to %v, want >= 3", reconnects)
	}
}

// TestDrainOnSIGTERM: clients get 1001, offline events are emitted,
// presence is clean and the process exits within the drain timeout.
func TestDrainOnSIGTERM(t *testing.T) {
	c := startProcCluster(t)
	p := c.startProc("d1", "-drain-timeout", "5s")
	c.waitHelperNodes("d1")
	events := c.consume("drain")
	const n = 100
	var clients []*wsClient
	for i := 0; i < n; i++ {
		clients = append(clients, c.connect(fmt.Sprintf("d-%d", i), ""))
	}
	checkFor(t, 5*time.Second, func() error {
		if k := events.count("online", ""); k != n {
			return fmt.Errorf("%d online events", k)
		}
		return nil
	})
	stop := make(chan struct{})
	go func() { // traffic during the drain
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = c.helper.SendBroadcastMessage(bg, `"tick"`)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	defer close(stop)
	p.signal(syscall.SIGTERM)
	took := p.waitExit(t, 6*time.Second)
	t.Logf("drained %d clients in %v", n, took.Round(time.Millisecond))
	for _, cl := range clients {
		if code := cl.closeCode(t); code != websocket.StatusGoingAway {
			t.Fatalf("%s closed with %d, want 1001", cl.id, code)
		}
	}
	if k, _ := c.helper.OnlineCount(bg); k != 0 {
		t.Errorf("%d clients still online after drain", k)
	}
	checkFor(t, 3*time.Second, func() error {
		if k := events.count("offline", wire.ReasonDrain); k != n {
			return fmt.Errorf("%d drain events, want %d", k, n)
		}
		return nil
	})
	if out, _ := c.redis.Exec("SMEMBERS", "im:nodes"); strings.Contains(out, "d1") {
		t.Errorf("node still registered: %q", out)
	}
}

// TestNodeJoinMovesClients: adding a third node moves about a third of the
// clients of a running pair, each with the moved code, spread over the move
// window, and each reconnects through a fresh URL to its new owner.
func TestNodeJoinMovesClients(t *testing.T) {
	c := startProcCluster(t)
	j1, j2 := c.startProc("j1", "-move-window", "2s"), c.startProc("j2", "-move-window", "2s")
	c.waitProcViews(j1, j2)
	const n = 300
	clients := map[string]*wsClient{}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("mv-%d", i)
		clients[id] = c.connect(id, "")
	}
	start := time.Now()
	p3 := c.startProc("j3", "-move-window", "2s")
	c.waitHelperNodes("j1", "j2", "j3")
	var moved []string
	var mu sync.Mutex
	var closeTimes []time.Duration
	var wg sync.WaitGroup
	for id, cl := range clients {
		if c.helper.Owner(id) != "j3" {
			continue
		}
		moved = append(moved, id)
		wg.Add(1)
		go func(id string, cl *wsClient) {
			defer wg.Done()
			code := cl.closeCode(t)
			mu.Lock()
			closeTimes = append(closeTimes, time.Since(start))
			mu.Unlock()
			if code != wire.CloseMoved {
				t.Errorf("%s closed with %d, want %d", id, code, wire.CloseMoved)
			}
		}(id, cl)
	}
	wg.Wait()
	if len(moved) < n/5 || len(moved) > n/2 {
		t.Errorf("%d of %d clients moved; want about a third", len(moved), n)
	}
	// Spread: the closes must not all land at once.
	var first, last time.Duration = time.Hour, 0
	for _, d := range closeTimes {
		first, last = min(first, d), max(last, d)
	}
	if last-first < 500*time.Millisecond {
		t.Errorf("moves not spread: all %d within %v", len(moved), last-first)
	}
	t.Logf("%d of %d clients moved, closes spread over %v", len(moved), n, (last - first).Round(time.Millisecond))
	for _, id := range moved {
		w := c.connect(id, "")
		if !strings.HasPrefix(w.url, p3.url) {
			t.Fatalf("%s reconnected to %s, want the new node", id, w.url)
		}
	}
	// The others were not disturbed.
	for id, cl := range clients {
		if c.helper.Owner(id) == "j3" {
			continue
		}
		select {
		case <-cl.done:
			t.Fatalf("%s was closed but its owner did not change", id)
		default:
		}
	}
}
