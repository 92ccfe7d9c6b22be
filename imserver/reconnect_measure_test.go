//go:build measure

package imserver_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/imbroker/imbroker/imhelper"
)

// TestReconnectAfterKillMeasure (build tag measure: a measurement, not part
// of CI, which never skips) measures how
// long the clients of a node killed with kill -9 take to be connected
// again, with the defaults a deployment runs: a 10 s lease, imhelper's 1 s
// view refresh, and clients that ask for a fresh URL every 100 ms until a
// dial succeeds.
//
//	go test -tags measure -run TestReconnectAfterKillMeasure -v ./imserver/
func TestReconnectAfterKillMeasure(t *testing.T) {
	c := startProcCluster(t)
	procs := []*nodeProc{c.startProc("k1", "-lease-ttl", "10s"), c.startProc("k2", "-lease-ttl", "10s")}
	c.waitProcViews(procs...)
	h, err := imhelper.New(bg, imhelper.Options{RedisURL: c.redis.URL(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const n = 200
	var victims []*wsClient
	for i := 0; len(victims) < n; i++ {
		if id := fmt.Sprintf("rk-%d", i); c.helper.Owner(id) == "k2" {
			victims = append(victims, c.connect(id, ""))
		}
	}
	killed := time.Now()
	_ = procs[1].cmd.Process.Kill()
	took := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i, v := range victims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-v.done
			for time.Since(killed) < time.Minute {
				ctx, cancel := context.WithTimeout(bg, 5*time.Second)
				u, err := h.PrevConnectServer(ctx, v.id, "")
				cancel()
				if err == nil {
					if w, err := dialWS(u); err == nil {
						took[i] = time.Since(killed)
						w.conn.CloseNow()
						return
					}
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	slices.Sort(took)
	if took[0] == 0 {
		t.Fatal("a client did not reconnect within a minute")
	}
	t.Logf("%d clients of a killed node, reconnect after kill -9: p50 %v, p99 %v, max %v (lease 10 s, imhelper refresh 1 s, retry every 100 ms)",
		n, took[n/2].Round(time.Millisecond), took[n*99/100].Round(time.Millisecond), took[n-1].Round(time.Millisecond))
}
