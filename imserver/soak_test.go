//go:build soak

package imserver_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// The soak is a command, not part of CI:
//
//	go test -tags soak -run TestSoak -timeout 0 -v ./imserver -soak.duration 10m
//
// Two node processes; a stable population of clients that stays connected
// and counts what it receives; churners that connect, linger and leave; a
// publisher of direct and channel messages. It prints the nodes'
// goroutines, heap and RSS after warm-up and at the end, and fails on ghost
// presence, leaked goroutines or lost messages to stable clients.
var (
	soakDuration = flag.Duration("soak.duration", 10*time.Minute, "how long to churn")
	soakStable   = flag.Int("soak.stable", 1000, "clients that stay connected")
	soakChurners = flag.Int("soak.churners", 16, "goroutines that connect and disconnect")
	soakRate     = flag.Int("soak.rate", 500, "direct messages per second to stable clients")
)

func TestSoak(t *testing.T) {
	c := startProcCluster(t)
	procs := []*nodeProc{c.startProc("s1", "-lease-ttl", "5s", "-probe-interval", "2s"), c.startProc("s2", "-lease-ttl", "5s", "-probe-interval", "2s")}
	c.waitHelperNodes("s1", "s2")
	time.Sleep(2 * time.Second)

	stable := make([]*wsClient, *soakStable)
	for i := range stable {
		stable[i] = c.connect(fmt.Sprintf("stable-%d", i), "")
	}
	if err := c.helper.JoinChanClients(bg, "soak", "stable-0", "stable-1", "stable-2"); err != nil {
		t.Fatal(err)
	}
	var received atomic.Int64
	for _, w := range stable {
		go func(w *wsClient) {
			for range w.frames {
				received.Add(1)
			}
		}(w)
	}
	ctx, cancel := context.WithTimeout(bg, *soakDuration)
	defer cancel()

	// Churners: connect a random id, linger 0.2-2 s, close; sometimes join a
	// channel, sometimes vanish without a close frame.
	var churned atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < *soakChurners; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for ctx.Err() == nil {
				id := fmt.Sprintf("churn-%d-%d", g, rand.IntN(50))
				u, err := c.helper.PrevConnectServer(bg, id, "")
				if err != nil {
					continue
				}
				w, err := dialWS(u)
				if err != nil {
					continue
				}
				if rand.IntN(3) == 0 {
					_ = c.helper.JoinChan(bg, id, "soak")
				}
				time.Sleep(time.Duration(200+rand.IntN(1800)) * time.Millisecond)
				if rand.IntN(4) == 0 {
					w.conn.CloseNow()
				} else {
					w.conn.Close(websocket.StatusNormalClosure, "")
				}
				churned.Add(1)
			}
		}(g)
	}
	// Publisher.
	var sent atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(*soakRate))
		defer tick.Stop()
		for i := 0; ctx.Err() == nil; i++ {
			<-tick.C
			to := fmt.Sprintf("stable-%d", rand.IntN(*soakStable))
			if _, err := c.helper.SendMessage(bg, "soak", []string{to}, `{"i":1}`); err == nil {
				sent.Add(1)
			}
			if i%100 == 0 {
				if _, err := c.helper.SendChanMessage(bg, "soak", "soak", `{"c":1}`); err == nil {
					sent.Add(3) // three stable members
				}
			}
		}
	}()

	time.Sleep(30 * time.Second) // warm-up
	start := []sample{procs[0].sample(t), procs[1].sample(t)}
	startTime := time.Now()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(time.Minute):
			for _, p := range procs {
				s := p.sample(t)
				t.Logf("%v %s: conns %.0f goroutines %.0f heap %.1f MiB rss %.1f MiB; churned %d sent %d received %d",
					time.Since(startTime).Round(time.Second), p.id, s.conns, s.goroutines, s.heap/(1<<20), s.rss/(1<<20),
					churned.Load(), sent.Load(), received.Load())
			}
		}
	}
	wg.Wait()
	// Settle: churned clients are gone, presence holds only the stable ones.
	checkFor(t, 30*time.Second, func() error {
		if n, _ := c.helper.OnlineCount(bg); n != int64(*soakStable) {
			return fmt.Errorf("%d online, want %d", n, *soakStable)
		}
		if received.Load() < sent.Load() {
			return fmt.Errorf("received %d of %d", received.Load(), sent.Load())
		}
		return nil
	})
	time.Sleep(5 * time.Second)
	t.Logf("| node | | goroutines | heap in use | RSS | sockets |")
	t.Logf("|---|---|---|---|---|---|")
	for i, p := range procs {
		end := p.sample(t)
		for _, r := range []struct {
			when string
			s    sample
		}{{"after warm-up", start[i]}, {"end", end}} {
			t.Logf("| %s | %s | %.0f | %.1f MiB | %.1f MiB | %.0f |", p.id, r.when, r.s.goroutines, r.s.heap/(1<<20), r.s.rss/(1<<20), r.s.conns)
		}
		if end.goroutines > start[i].goroutines+50 {
			t.Errorf("%s: goroutines grew from %.0f to %.0f", p.id, start[i].goroutines, end.goroutines)
		}
	}
	t.Logf("churned %d connections over %v; %d messages sent to stable clients, %d received",
		churned.Load(), *soakDuration, sent.Load(), received.Load())
	if received.Load() != sent.Load() {
		t.Errorf("stable clients received %d of %d messages", received.Load(), sent.Load())
	}
}
